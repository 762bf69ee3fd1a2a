"""Plain networks (`nets`, `gan_nets`), the thin LightningModules that wrap them (`classifier`,
`gan`) and the deploy-time wrapper (`deploy`). Imports data (augment) and the shared helpers."""

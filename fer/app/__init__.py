"""What `fer-predict` needs at run time and nothing from training: the recognizer (MTCNN, the
training aligner, the classifier), media readers, tracking, annotation and the command line.
Imports models, data (alignment, image suffixes, atomic writes) and reports.figures."""

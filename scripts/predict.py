"""Predict emotions in images, folders, videos or a webcam; the same as the `fer-predict` command.

    python scripts/predict.py photo.jpg clips/ -o out/        (python scripts/predict.py -h for all options)
"""

import sys

from fer.app.predict import main

if __name__ == "__main__":
    sys.exit(main())

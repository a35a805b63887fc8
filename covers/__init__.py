"""covers: hyperparameter-sweep experiments on image classifiers (album genre from its cover)."""

import os

# albumentations asks PyPI for a newer version at every import (a 2 s timeout, a warning when offline), in every
# sweep worker and subprocess; a user who wants the check sets NO_ALBUMENTATIONS_UPDATE=0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

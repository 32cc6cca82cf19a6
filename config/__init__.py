# The project package is `config`, never `platform`: a top-level package named
# `platform` would shadow the standard-library module that boto3, celery,
# requests and huggingface_hub import.
from __future__ import annotations

from config.celery import app as celery_app

__all__ = ["celery_app"]

"""The Celery side: ``celery -A worker worker`` runs :data:`app`."""

from worker.app import create_app

app = create_app()

__all__ = ["app", "create_app"]

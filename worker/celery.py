"""What ``celery -A worker worker|beat|flower`` loads: the app built from the environment."""

from worker.factory import create_app

app = create_app()

"""The HTTP API and the Team page (FastAPI on uvicorn): ``credits serve``."""

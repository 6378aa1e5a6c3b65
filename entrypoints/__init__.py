"""Entry points: the ``credits`` CLI (with its embedded demo), above both the domain
(``shared``) and the Celery side (``worker``). Nothing below imports them."""

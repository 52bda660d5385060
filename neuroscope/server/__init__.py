"""The two HTTP applications (chat on one port, features on the other) and ``serve()``."""

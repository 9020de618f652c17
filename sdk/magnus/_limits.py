"""Protocol limits, importable without msgspec (the SDK's call path must stay light)."""

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # bytes of one frame's payload
MAX_KEY_LEN = 250

"""The backend contract: the hooks a plugin implements and the records they pass."""

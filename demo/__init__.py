"""Countersign's own demo: the plugin `demo` (plugin.py), the shop, the scripted model."""

from pathlib import Path

# Who the demo names besides its policy's approvers (the requester ops-dana): the plugin's
# directory, here so that reading it imports none of the demo's tools (the gateway reads it).
DIRECTORY = Path(__file__).parent / "directory.toml"

"""Bundled plugins. Each module exposes its plugin class as ``plugin``; see README "Writing a plugin"."""

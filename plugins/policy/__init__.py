"""The ``policy`` plugin: Casbin access control over backends' tools, prompts and resources.

See ``plugins/policy/plugin.py`` for what is decided and ``policies/README.md`` for writing policies.
"""

from plugins.policy.plugin import Policy, PolicyOptions

plugin = Policy

__all__ = ["Policy", "PolicyOptions", "plugin"]

"""Filling a catalogue's Vagrantfile template: `${NAME}` placeholders replaced by Ruby literals.

One template per catalogue entry (`backends.vagrant.vagrantfile`) describes the lab itself: box, resources,
forwarded ports, provisioning. The same template is rendered twice: by the Vagrant connector for a hosted lab
(`HOSTED` true, ports from the backend's range, on the address guacd reaches) and for a learner's take-away
bundle (`HOSTED` false, fixed ports on the learner's loopback), so the lab a learner takes home is the very
one the course runs. What only a server needs (provider URI, storage pool, LabDesk's SSH key) is appended
by the connector as a second `Vagrant.configure` block, which Vagrant merges over the first.

Why Ruby literals and not text substitution inside quotes: a value is then always a whole literal the
template cannot misquote, and a box name or folder holding a quote, a backslash or `#{...}` can never turn
into Ruby code. Strings become single-quoted literals (in which Ruby interprets only `\\` and `\'`), numbers
stay numbers, `true`/`false`/`nil` stay themselves, lists become arrays. A template names each placeholder
bare: `config.vm.box = ${BOX}`, `memory = ${MEMORY_MB}`.

Standard only (no broker imports): both the broker (take-away bundles) and connectors.vagrant use it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
PORT_PLACEHOLDER = re.compile(r"[A-Z0-9_]*_PORT\Z")


class TemplateError(ValueError):
    """A template names a placeholder nobody fills, or a value cannot be written as Ruby."""


def ruby_literal(value: Any) -> str:
    """`value` as a Ruby literal: 'text' (only \\ and ' escaped), 42, 1.5, true, false, nil, [..]."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TemplateError(f"{value} cannot be written into a Vagrantfile (Ruby has no such literal)")
        return repr(value)
    if isinstance(value, str):
        if "\0" in value:
            raise TemplateError("a NUL character cannot be written into a Vagrantfile")
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(ruby_literal(item) for item in value) + "]"
    raise TemplateError(f"cannot write {type(value).__name__} into a Vagrantfile")


def placeholders(template: str) -> list[str]:
    """The placeholder names a template uses, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(template)))


def port_placeholders(template: str) -> list[str]:
    """The placeholders that name a host port (`SSH_PORT`, `RDP_PORT`, `UDP_PORT`, ...)."""
    return [name for name in placeholders(template) if PORT_PLACEHOLDER.match(name)]


def render(template: str, values: Mapping[str, Any]) -> str:
    """The template with every `${NAME}` replaced by `ruby_literal(values[NAME])`.

    Raises TemplateError naming every placeholder without a value, so a broken catalogue entry fails with
    one clear message instead of a Ruby NameError at `vagrant up`.
    """
    missing = [name for name in placeholders(template) if name not in values]
    if missing:
        raise TemplateError(f"the Vagrantfile template uses placeholders nobody fills: {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda match: ruby_literal(values[match.group(1)]), template)


def provider_block(provider: str, options: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """A `Vagrant.configure` block setting `config.<key> = value` and the provider's `<p>.<key> = value`.

    Keys are checked to be plain Ruby method names (`storage_pool_name`, `ssh.private_key_path`), so a
    setting can only ever be an assignment.
    """
    lines = ['Vagrant.configure("2") do |config|']
    for key, value in (config or {}).items():
        lines.append(f"  config.{_setting(key)} = {ruby_literal(value)}")
    lines.append(f"  config.vm.provider {ruby_literal(_setting(provider))} do |p|")
    for key, value in options.items():
        lines.append(f"    p.{_setting(key)} = {ruby_literal(value)}")
    lines += ["  end", "end", ""]
    return "\n".join(lines)


SETTING = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*\Z")


def _setting(key: str) -> str:
    if not SETTING.match(key):
        raise TemplateError(f"not a Vagrant setting name: {key!r}")
    return key

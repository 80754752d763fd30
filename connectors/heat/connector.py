"""HeatConnector: each lab is one OpenStack Heat stack, suspended and resumed whole by Heat itself.

Heat can suspend a stack of ten servers, three networks and two routers in place and resume it exactly
as it was, which is what makes per-learner labs affordable on a cloud. See docs/heat.md for the
settings, the template contract and how providers fail over.

The handle names the provider and stack id plus the `StackRequest`, so any worker can observe the stack,
act on it, or create it again on the next provider. Nothing secret is in the handle: per-lab credentials
are derived from the backend's `credential_seed` secret (connectors.credentials).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Mapping

import yaml

from broker.connector import (
    Capability,
    CheckTarget,
    Connector,
    DesktopEndpoint,
    Handle,
    LabSpec,
    ManagedObject,
    Observation,
    ObservedState,
)
from broker.errors import CapacityError, ConfigError, ConnectorError, PermanentError, TransientError
from connectors.credentials import LabCredentials, derive
from connectors.heat import naming, outputs, status
from connectors.heat.errors import StackNotFound, heat_errors
from connectors.heat.hooks import HookSettings, merged_hooks, run_hook
from connectors.heat.parameters import generated_values, stack_parameters
from connectors.heat.providers import UNLIMITED, Provider, heat_client, parse_providers
from connectors.heat.request import StackRequest

log = logging.getLogger(__name__)
SHIPPED_CATALOGUE = Path(__file__).resolve().parents[2] / "desktop-images"
LIVE_GONE = ("DELETE_COMPLETE", "DELETE_IN_PROGRESS")
WENT_WRONG = ("CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED")
FULL = "No lab machine is free right now; your lab starts as soon as one is."
CREDENTIAL_PARAMETERS = {"learner_password_hash", "learner_public_key", "learner_vnc_passwd_b64", "grader_public_key", "service_public_key"}
NO_PROVIDER_LEFT = "The cloud could not create this lab. Please try again later or tell your instructor."


class HeatConnector(Connector):
    """Labs as Heat stacks on one or more providers, tried in order."""

    capabilities = frozenset({Capability.SUSPEND, Capability.MULTI_HOST})

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        try:
            self.prefix = naming.check_prefix(str(self.config.get("name_prefix", "labdesk")))
        except ValueError as exc:
            raise ConfigError(f"heat backend {name}: {exc}") from None
        self.providers = parse_providers(self.config)
        self.call_timeout = float(self.config.get("call_timeout", 30))
        self.create_timeout = float(self.config.get("create_timeout", 1200))
        self.root = Path(self.config.get("catalogue_root") or SHIPPED_CATALOGUE)
        self.site_parameters = dict(self.config.get("parameters") or {})
        self.hook_settings = HookSettings(self.config.get("hook_user"), float(self.config.get("hook_timeout", 60)), self.root)
        self._clients: dict[str, Any] = {}

    # -- the connector interface -------------------------------------------------------------------
    def provision(self, spec: LabSpec) -> Handle:
        """Adopt the lab's stack if one exists on any provider, else create it on the first with room."""
        request = StackRequest.from_spec(spec)
        found = self._find_live(request.lab_id)
        if found is not None:
            provider, stack = found
            return self._handle(request, provider.name, stack.id)
        return self._create_somewhere(request, tried=[], failures=[])

    def observe(self, handle: Handle) -> Observation:
        provider = self._provider(handle["provider"])
        try:
            with heat_errors(provider.name, "reading the stack"):
                stack = self._client(provider).stacks.get(handle["stack_id"])
        except StackNotFound:
            return self._adopt_or_gone(handle)
        if stack.stack_status == "DELETE_COMPLETE":
            return self._adopt_or_gone(handle)
        if self._create_went_wrong(stack):
            return self._fail_over(handle, stack)
        return status.observation(stack.stack_status, stack.stack_status_reason or "", self._resource_statuses(provider, stack))

    def suspend(self, handle: Handle) -> None:
        stack = self._stack_or_none(handle)
        if stack is None or stack.stack_status.startswith("SUSPEND_"):
            return
        self._hook("before_suspend", handle)
        provider = self._provider(handle["provider"])
        with heat_errors(provider.name, "suspending the stack"):
            self._client(provider).actions.suspend(handle["stack_id"])

    def resume(self, handle: Handle) -> None:
        stack = self._stack_or_none(handle)
        if stack is None or stack.stack_status != "SUSPEND_COMPLETE":
            return
        provider = self._provider(handle["provider"])
        with heat_errors(provider.name, "resuming the stack"):
            self._client(provider).actions.resume(handle["stack_id"])

    def after_resume(self, handle: Handle) -> None:
        self._hook("after_resume", handle)

    def delete(self, handle: Handle) -> None:
        """Delete every stack this lab holds, on every provider (a failed-over create leaves one behind)."""
        stack = self._stack_or_none(handle)
        if stack is not None and stack.stack_status in ("CREATE_COMPLETE", "RESUME_COMPLETE", "UPDATE_COMPLETE"):
            self._hook("before_delete", handle)
        lab_id = int(handle["lab_id"])
        for provider in self.providers:
            for found in self._stacks_of(provider, naming.lab_tag(self.prefix, lab_id)):
                if found.stack_status not in LIVE_GONE:  # a delete already under way is left to finish
                    self._delete_stack(provider, found.id)

    def endpoints(self, handle: Handle) -> list[DesktopEndpoint]:
        request = StackRequest.from_json(handle["request"])
        provider = self._provider(handle["provider"])
        with heat_errors(provider.name, "reading the stack outputs"):
            stack = self._client(provider).stacks.get(handle["stack_id"])
        try:
            hosts = outputs.hosts_from_outputs(outputs.outputs_dict(stack.outputs), request.protocol)
        except outputs.OutputError as exc:
            raise PermanentError(f"stack {stack.stack_name}: {exc}", "The lab's template is broken. Please tell your instructor.") from None
        return outputs.endpoints(hosts, request.protocol, self._generated_credentials(request))

    def check_targets(self, handle: Handle) -> list[CheckTarget]:
        """One SSH target per machine of the stack: the grader account (`grader_user`, default "grader")
        with the lab's service key, whose public half the template received as `grader_public_key`.

        `grader_command` says what the account's sshd forces: "grader-run" (the default, as in the
        shipped images) makes the `ssh` grading hook send the script to `grader-run run-script`; any
        other value (e.g. "" for an account without a forced command) uses the plain shell wrapper.
        """
        if "request" not in handle:
            raise PermanentError(f"heat handle without a request: {handle!r}", status.GONE_MESSAGE)
        request = StackRequest.from_json(handle["request"])
        stack = self._stack_or_none(handle)
        if stack is None:
            raise PermanentError(f"stack {handle.get('stack_name')} is gone", status.GONE_MESSAGE)
        try:
            hosts = outputs.hosts_from_outputs(outputs.outputs_dict(stack.outputs), request.protocol)
        except outputs.OutputError as exc:
            raise PermanentError(f"stack {handle.get('stack_name')}: {exc}", "The lab's template is broken. Please tell your instructor.") from None
        user = str(self.config.get("grader_user") or "grader")
        forced = self.config.get("grader_command", "grader-run") == "grader-run"
        key = self._credentials(request).service_private_key
        return [
            CheckTarget(
                host=host.name,
                runner="ssh",
                address=host.address,
                port=int(host.ports.get("ssh", 22)),
                user=user,
                private_key=key,
                extra={"command": "grader-run"} if forced else {},
            )
            for host in hosts
        ]

    def list_managed(self) -> list[ManagedObject]:
        managed = []
        for provider in self.providers:
            for stack in self._stacks_of(provider, self.prefix):
                lab_id = naming.lab_id_of(self.prefix, getattr(stack, "tags", None), stack.stack_name)
                if lab_id is not None and stack.stack_status not in LIVE_GONE:
                    handle = {"lab_id": lab_id, "provider": provider.name, "stack_id": stack.id, "stack_name": stack.stack_name}
                    managed.append(ManagedObject(lab_id, handle))
        return managed

    def available(self) -> bool:
        """True when at least one provider answers."""
        for provider in self.providers:
            try:
                with heat_errors(provider.name, "listing stacks"):
                    list(self._client(provider).stacks.list(limit=1))
                return True
            except (ConnectorError, StackNotFound) as exc:
                log.warning("heat backend %s: %s", self.name, exc)
        return False

    def stack_arguments(self, spec: LabSpec) -> dict[str, Any]:
        """What `provision` would send to the first provider for this lab (template checks, diagnostics)."""
        request = StackRequest.from_spec(spec)
        template, environment = self._template(request)
        return self._create_arguments(request, self._ordered(request)[0], template, environment)

    # -- creating, with failover ---------------------------------------------------------------------
    def _create_somewhere(self, request: StackRequest, tried: list[str], failures: list[str]) -> Handle:
        """Create the stack on the first provider in order that is untried, enabled and has room."""
        template, environment = self._template(request)
        full: list[str] = []
        transient = False
        for provider in self._ordered(request):
            if provider.name in tried or provider.capacity == 0:
                continue
            try:
                if provider.capacity != UNLIMITED and not provider.has_room(self._count(provider)):
                    full.append(provider.name)
                    continue
                stack_id = self._create(provider, self._create_arguments(request, provider, template, environment))
            except CapacityError:
                full.append(provider.name)
                continue
            except ConnectorError as exc:
                made = self._made_anyway(provider, request.lab_id) if isinstance(exc, TransientError) else None
                if made is not None:
                    log.warning("lab %s: the create on %s got no answer (%s) but made stack %s: adopted", request.lab_id, provider.name, exc, made)
                    return self._handle(request, provider.name, made, tried, failures)
                transient = transient or isinstance(exc, TransientError)
                failures = [*failures, f"{provider.name}: {exc}"]
                tried = [*tried, provider.name]
                self._clean_up_after_failed_create(provider, request.lab_id)
                continue
            return self._handle(request, provider.name, stack_id, tried, failures)
        raise _nowhere(full, failures, transient)

    def _create_arguments(self, request: StackRequest, provider: Provider, template: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
        """The stack create call's arguments on `provider`."""
        declared = set(template.get("parameters", {}))
        creds = self._credentials(request) if declared & CREDENTIAL_PARAMETERS else None
        generated = generated_values(request.lab_id, request.course, request.ports, creds)
        return dict(
            stack_name=naming.stack_name(self.prefix, request.lab_id),
            template=template,
            environment=environment,
            parameters=stack_parameters(declared, {**self.site_parameters, **provider.parameters}, request.parameters, generated),
            tags=",".join(naming.stack_tags(self.prefix, request.lab_id, request.course)),
            disable_rollback=True,  # keep a failed stack so its reason can be read, then delete it
            timeout_mins=max(1, -(-int(self.create_timeout) // 60)),
        )

    def _create(self, provider: Provider, arguments: Mapping[str, Any]) -> str:
        with heat_errors(provider.name, f"creating stack {arguments['stack_name']}"):
            created = self._client(provider).stacks.create(**arguments)
        return str(created["stack"]["id"])

    def _create_went_wrong(self, stack: Any) -> bool:
        """A create that failed, was rolled back, or has run past `create_timeout`."""
        if stack.stack_status in WENT_WRONG:
            return True
        return stack.stack_status == "CREATE_IN_PROGRESS" and _age(stack.creation_time) > self.create_timeout

    def _fail_over(self, handle: Handle, stack: Any) -> Observation:
        """Create the stack on the next provider, then delete the one that went wrong."""
        request = StackRequest.from_json(handle["request"])
        provider = self._provider(handle["provider"])
        reason = stack.stack_status_reason or stack.stack_status
        if stack.stack_status == "CREATE_IN_PROGRESS":
            reason = f"not created within {int(self.create_timeout)} s"
        failures = [*handle.get("failures", []), f"{provider.name}: {reason}"]
        tried = [*handle.get("tried", []), provider.name]
        try:
            moved = self._create_somewhere(request, tried, failures)
        except ConnectorError as exc:
            if isinstance(exc, PermanentError) or all(p.name in tried or p.capacity == 0 for p in self.providers):
                return Observation(ObservedState.ERROR, 0, f"Heat could not create the lab: {'; '.join(failures)}")
            return Observation(ObservedState.PENDING, 0, exc.user_message)  # full or unreachable: try again later
        self._delete_stack(provider, stack.id)
        log.warning("lab %s: stack on %s failed (%s); now on %s", request.lab_id, provider.name, reason, moved["provider"])
        return Observation(ObservedState.PENDING, 0, f"Trying another cloud ({moved['provider']})", handle=moved)

    def _made_anyway(self, provider: Provider, lab_id: int) -> str | None:
        """The id of the lab's stack a create made although its answer was lost (a 502 or a dropped
        connection after Heat took the request), if Heat lists one that is sound: adopting it, rather than
        deleting it and creating another, is one create per lab. None when Heat lists none or cannot say."""
        try:
            stacks = self._stacks_of(provider, naming.lab_tag(self.prefix, lab_id))
        except (ConnectorError, StackNotFound):
            return None
        sound = [s for s in stacks if s.stack_status not in LIVE_GONE and s.stack_status not in WENT_WRONG]
        return str(sound[0].id) if sound else None

    def _clean_up_after_failed_create(self, provider: Provider, lab_id: int) -> None:
        """A create that timed out may still have made the stack: delete whatever exists for the lab."""
        try:
            for stack in self._stacks_of(provider, naming.lab_tag(self.prefix, lab_id)):
                self._delete_stack(provider, stack.id)
        except ConnectorError as exc:
            log.warning("lab %s: cleaning up on %s failed (the reconciler retries): %s", lab_id, provider.name, exc)

    def _adopt_or_gone(self, handle: Handle) -> Observation:
        """The handle's stack is gone; if another provider holds a live stack of this lab, follow it."""
        found = self._find_live(int(handle["lab_id"]))
        if found is None:
            return Observation(ObservedState.GONE, 100, status.GONE_MESSAGE)
        provider, stack = found
        request = StackRequest.from_json(handle["request"])
        seen = status.observation(stack.stack_status, stack.stack_status_reason or "")
        moved = self._handle(request, provider.name, stack.id, handle.get("tried", []), handle.get("failures", []))
        return Observation(seen.state, seen.progress, seen.message, handle=moved)

    # -- small Heat helpers -----------------------------------------------------------------------------
    def _client(self, provider: Provider) -> Any:
        if provider.name not in self._clients:
            self._clients[provider.name] = heat_client(provider, self.call_timeout)
        return self._clients[provider.name]

    def _provider(self, name: str) -> Provider:
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise PermanentError(f"heat provider {name!r} is no longer configured", "This lab's cloud was removed. Reset the lab to start again.")

    def _ordered(self, request: StackRequest) -> list[Provider]:
        if not request.providers:
            return list(self.providers)
        by_name = {p.name: p for p in self.providers}
        unknown = [n for n in request.providers if n not in by_name]
        if unknown:
            raise PermanentError(f"the image names unknown Heat providers {unknown}", NO_PROVIDER_LEFT)
        return [by_name[n] for n in request.providers]

    def _stacks_of(self, provider: Provider, tag: str) -> list[Any]:
        with heat_errors(provider.name, f"listing stacks tagged {tag}"):
            return list(self._client(provider).stacks.list(tags=tag))

    def _count(self, provider: Provider) -> int:
        """Stacks counting against capacity: all of LabDesk's on the provider, suspended ones included."""
        return sum(1 for s in self._stacks_of(provider, self.prefix) if s.stack_status not in LIVE_GONE)

    def _find_live(self, lab_id: int) -> tuple[Provider, Any] | None:
        """The lab's stack that is not deleted, preferring one whose create did not go wrong."""
        found = [
            (provider, stack)
            for provider in self.providers
            for stack in self._stacks_of(provider, naming.lab_tag(self.prefix, lab_id))
            if stack.stack_status not in LIVE_GONE
        ]
        found.sort(key=lambda pair: pair[1].stack_status in WENT_WRONG)
        return found[0] if found else None

    def _stack_or_none(self, handle: Handle) -> Any | None:
        provider = self._provider(handle["provider"])
        try:
            with heat_errors(provider.name, "reading the stack"):
                stack = self._client(provider).stacks.get(handle["stack_id"])
        except StackNotFound:
            return None
        return None if stack.stack_status == "DELETE_COMPLETE" else stack

    def _delete_stack(self, provider: Provider, stack_id: str) -> None:
        try:
            with heat_errors(provider.name, "deleting the stack"):
                self._client(provider).stacks.delete(stack_id)
        except StackNotFound:
            pass

    def _resource_statuses(self, provider: Provider, stack: Any) -> list[str]:
        if not stack.stack_status.endswith("_IN_PROGRESS"):
            return []
        try:
            with heat_errors(provider.name, "listing resources"):
                return [r.resource_status for r in self._client(provider).resources.list(stack.id)]
        except (ConnectorError, StackNotFound):
            return []  # progress is a nicety; the state is what matters

    def _handle(self, request: StackRequest, provider: str, stack_id: str, tried: list[str] | None = None, failures: list[str] | None = None) -> Handle:
        return {
            "lab_id": request.lab_id,
            "stack_name": naming.stack_name(self.prefix, request.lab_id),
            "provider": provider,
            "stack_id": stack_id,
            "tried": list(tried or []),
            "failures": [f[:300] for f in failures or []],
            "request": request.to_json(),
        }

    # -- templates, credentials and hooks ----------------------------------------------------------------
    def _template(self, request: StackRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        template = self._yaml(request.template)
        environment = self._yaml(request.environment) if request.environment else {}
        return template, environment

    def _yaml(self, relative: str) -> dict[str, Any]:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            raise PermanentError(f"Heat template file not found under {self.root}: {relative}", NO_PROVIDER_LEFT)
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise PermanentError(f"{relative}: not a YAML mapping", NO_PROVIDER_LEFT)
        return data

    def _seed(self) -> str:
        seed = self.config.get("credential_seed")
        if not seed:
            raise ConfigError(f"heat backend {self.name}: the secret credential_seed is missing (labdesk backends add generates one)")
        return str(seed)

    def _credentials(self, request: StackRequest) -> LabCredentials:
        return derive(self._seed(), request.lab_id)

    def _generated_credentials(self, request: StackRequest) -> outputs.Credentials:
        """The generated credentials the template took as parameters (the others the lab never saw)."""
        declared = set(self._template(request)[0].get("parameters", {}))
        if not declared & {"learner_password_hash", "learner_public_key", "learner_vnc_passwd_b64"}:
            return outputs.Credentials()
        creds = self._credentials(request)
        return outputs.Credentials(
            password=creds.password if "learner_password_hash" in declared else None,
            vnc_password=creds.vnc_password if "learner_vnc_passwd_b64" in declared else None,
            private_key=creds.learner_private_key if "learner_public_key" in declared else None,
        )

    def _hook(self, event: str, handle: Handle) -> None:
        if "request" not in handle:  # a leftover found by list_managed: nobody's lab to look after
            return
        request = StackRequest.from_json(handle["request"])
        script = merged_hooks(self.config.get("hooks"), request.hooks).get(event)
        if script is None:
            return
        try:
            hosts = outputs.hosts_from_outputs(self._outputs(handle), request.protocol)
        except (ConnectorError, StackNotFound, outputs.OutputError) as exc:
            log.warning("lab %s: %s hook skipped, no hosts: %s", request.lab_id, event, exc)
            return
        lab = naming.stack_name(self.prefix, request.lab_id)
        run_hook(event, script, hosts, self._credentials(request).service_private_key, self.hook_settings, lab)

    def _outputs(self, handle: Handle) -> dict[str, Any]:
        provider = self._provider(handle["provider"])
        with heat_errors(provider.name, "reading the stack outputs"):
            return outputs.outputs_dict(self._client(provider).stacks.get(handle["stack_id"]).outputs)


def _nowhere(full: list[str], failures: list[str], transient: bool) -> ConnectorError:
    """Why no provider took the stack: all full (wait), a passing fault (retry), or refused everywhere."""
    if full:
        return CapacityError(f"every Heat provider with room was tried; full: {', '.join(full)}", FULL)
    detail = "; ".join(failures) or "no provider is enabled"
    kind = TransientError if transient else PermanentError
    return kind(f"no Heat provider could create the stack: {detail}", NO_PROVIDER_LEFT)


def _age(creation_time: str | None) -> float:
    """Seconds since Heat's `creation_time` ("2026-11-22T05:34:46Z"); 0 when Heat gave none."""
    if not creation_time:
        return 0.0
    created = datetime.fromisoformat(creation_time.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (datetime.now(UTC) - created).total_seconds()

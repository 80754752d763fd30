"""Heat and Keystone failures translated into the broker's four error kinds, with the provider named."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from heatclient import exc
from keystoneauth1 import exceptions as ks

from broker.errors import CapacityError, PermanentError, TransientError

REFUSED = "The cloud refused to create this lab. Please tell your instructor."
MISCONFIGURED = "This lab's cloud backend is misconfigured. Please tell your instructor."
BUSY = "The cloud is not answering right now; LabDesk keeps trying."


class StackNotFound(Exception):
    """Heat answered 404 for the stack."""


@contextmanager
def heat_errors(provider: str, doing: str) -> Iterator[None]:
    """Run a Heat call; raise StackNotFound or the broker error its failure means."""
    where = f"heat provider {provider}: {doing}"
    try:
        yield
    except exc.HTTPNotFound as error:
        raise StackNotFound(str(error)) from None
    except (exc.HTTPUnauthorized, exc.HTTPForbidden, ks.Unauthorized, ks.Forbidden) as error:
        raise PermanentError(f"{where}: credentials refused: {_text(error)}", MISCONFIGURED) from None
    except exc.HTTPOverLimit as error:
        raise CapacityError(f"{where}: over limit: {_text(error)}", "No lab machine is free right now.") from None
    except exc.HTTPBadRequest as error:
        if "maximum stacks" in str(error):  # Heat's max_stacks_per_tenant: the project is full
            raise CapacityError(f"{where}: {_text(error)}", "No lab machine is free right now.") from None
        raise PermanentError(f"{where}: refused: {_text(error)}", REFUSED) from None
    except exc.HTTPException as error:  # 409 busy, 5xx
        raise TransientError(f"{where}: HTTP {getattr(error, 'code', '?')}: {_text(error)}", BUSY) from None
    except (ks.EndpointNotFound, ks.CatalogException) as error:  # wrong region or interface
        raise PermanentError(f"{where}: no Heat endpoint: {_text(error)}", MISCONFIGURED) from None
    except ks.ClientException as error:  # connection refused, timeouts, other Keystone trouble
        raise TransientError(f"{where}: {type(error).__name__}: {_text(error)}", BUSY) from None


def _text(error: Exception) -> str:
    return " ".join(str(error).split())[:500]

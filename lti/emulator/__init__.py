"""The built-in LMS emulator (development and demo only): a real LTI 1.3 platform on the same server.

It launches LabDesk from a demo course (OIDC login, signed id_token), answers LabDesk's service calls
(OAuth 2 token, grades, roster) and receives deep-linking responses. Modules, one concept each:

    site          identity and URLs          signing      the emulator's RSA key
    people        users and roles            store        state in Redis (and what tests read)
    launches      lti_message_hint values    messages     id_token claims
    auth          OIDC authorization         oauth        token endpoint and access tokens
    guard         outage and bearer checks   paging       limit and Link headers
    ags           grades (AGS 2.0)           score_rules  what a score must look like
    nrps          roster (NRPS 2.0)          deep_link    deep-linking return
    tool_keys     verifying what LabDesk signs           request_log  what the services were asked
    pages         course page, gradebook, outage switch, JWKS
    registration  the emulator's row in LabDesk's platform table
    blueprint     the one blueprint all routes hang on
"""

from lti.emulator import ags, auth, deep_link, errors, nrps, oauth, pages  # noqa: F401  (they add the routes)
from lti.emulator.blueprint import emulator
from lti.emulator.registration import register_with_tool

__all__ = ["emulator", "register_with_tool"]

errors.install(emulator)

// The lab page's calls to LabDesk: the lab's status, single-use connection tokens, reset, and the
// presence signals (keepalive, leave) the broker uses to suspend labs nobody is looking at.

/** The outcome of one JSON call: `ok`, the HTTP `status` (0 when the network failed) and the `body`. */
export async function outcome(request) {
  let response;
  try {
    response = await request;
  } catch (error) {
    return { ok: false, status: 0, body: { error: "LabDesk cannot be reached", advice: "Check your network connection." } };
  }
  let body = {};
  try {
    body = await response.json();
  } catch (error) {
    body = {};
  }
  return { ok: response.ok, status: response.status, body };
}

export class LabApi {
  /** `base` is the lab's API address (/api/labs/<id>); `csrf` the session's CSRF token. */
  constructor(base, csrf) {
    this.base = base;
    this.csrf = csrf;
  }

  status() {
    return outcome(fetch(this.base, { credentials: "same-origin", headers: { Accept: "application/json" } }));
  }

  /** A fresh connection token for `host` (empty: the lab's default machine); watchers mint read-only ones. */
  connection(host, watch) {
    return this.#post(watch ? "watch-connection" : "connection", { host: host || "" });
  }

  reset() {
    return this.#post("reset", {});
  }

  keepalive() {
    return fetch(`${this.base}/keepalive`, { method: "POST", credentials: "same-origin", keepalive: true })
      .catch(() => undefined);
  }

  /** "I left": sent as a beacon so it survives the tab closing. */
  leave() {
    navigator.sendBeacon(`${this.base}/leave`);
  }

  #post(path, body) {
    return outcome(fetch(`${this.base}/${path}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": this.csrf },
      body: JSON.stringify(body),
    }));
  }
}

/** A readable sentence for a failed call: the server's own advice when it gave one. */
export function explain(result) {
  const { error, advice } = result.body || {};
  if (error && advice) return `${error}. ${advice}`;
  return error || advice || `LabDesk answered with error ${result.status}. Please try again.`;
}

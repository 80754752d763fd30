// "Take this lab home": the learner asks LabDesk for a zip that runs this very lab on their own computer
// with `vagrant up` (docs/takeaway.md). When the lab keeps a work folder, a worker reads it from the
// running lab first, which can take a while: the page says so, follows the export every second, then
// offers the download link, or says why the bundle could not be made. On load the page offers the
// lab's latest bundle, if there is one.

import { explain, outcome } from "./lab-api.js";
import { setText } from "./lab-progress.js";

const POLL_MS = 1000;
const FINISHED = new Set(["ready", "failed"]);

/** A size as people read it: 812 bytes, 14 KB, 3.2 MB. */
export function formatSize(bytes) {
  const size = Number(bytes);
  if (!Number.isFinite(size) || size < 0) return "";
  if (size < 1024) return `${size} bytes`;
  if (size < 1024 * 1024) return `${Math.round(size / 1024)} KB`;
  return `${Math.round((size / (1024 * 1024)) * 10) / 10} MB`;
}

/** The sentence for an export's state (the live region reads it). */
export function statusOf(exported) {
  if (exported.state === "pending") return "Making your bundle: reading your work folder from your lab…";
  if (exported.state === "failed") return "";
  const size = formatSize(exported.size);
  const note = exported.message ? ` ${exported.message}` : "";
  return `Your lab is ready to take home${size ? ` (${size})` : ""}.${note}`;
}

export class TakeawayPanel {
  /** `button` starts an export; `panel` shows its progress, the link or the error; `urls` and `csrf` come
   * from the panel's data attributes. */
  constructor({ button, panel, elements, urls, csrf }) {
    this.button = button;
    this.panel = panel;
    this.el = elements;
    this.urls = urls;
    this.csrf = csrf;
    this.timer = null;
    this.busy = false;
  }

  start() {
    this.button.addEventListener("click", () => this.takeAway());
    this.#loadLatest();
  }

  /** "Take this lab home" was pressed. */
  async takeAway() {
    if (this.busy) return;
    this.#setBusy(true);
    this.#show();
    this.#showError("");
    this.el.link.hidden = true;
    setText(this.el.status, "Making your bundle…");
    const result = await outcome(fetch(this.urls.start, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": this.csrf },
      body: "{}",
    }));
    if (!result.ok) {
      this.#setBusy(false);
      setText(this.el.status, "");
      this.#showError(explain(result));
      return;
    }
    this.#follow(result.body.export);
  }

  async #loadLatest() {
    const result = await outcome(fetch(this.urls.latest, { credentials: "same-origin", headers: { Accept: "application/json" } }));
    if (result.ok && result.body && result.body.id) {
      this.#show();
      this.#follow(result.body);
    }
  }

  #follow(exported) {
    this.#render(exported);
    window.clearTimeout(this.timer);
    const finished = FINISHED.has(exported.state);
    this.#setBusy(!finished);
    if (!finished) this.timer = window.setTimeout(() => this.#poll(), POLL_MS);
  }

  async #poll() {
    const result = await outcome(fetch(this.urls.latest, { credentials: "same-origin", headers: { Accept: "application/json" } }));
    if (result.ok) {
      this.#follow(result.body);
      return;
    }
    this.#setBusy(false);
    this.#showError(explain(result));
  }

  #render(exported) {
    this.panel.dataset.state = exported.state;
    setText(this.el.status, statusOf(exported));
    const ready = exported.state === "ready" && exported.download_url;
    this.el.link.hidden = !ready;
    if (ready) this.el.download.href = exported.download_url;
    this.#showError(exported.state === "failed" ? `Your lab could not be packed up: ${exported.message || "please try again."}` : "");
  }

  #show() {
    this.panel.hidden = false;
  }

  #setBusy(busy) {
    this.busy = busy;
    this.button.disabled = busy;
    this.button.setAttribute("aria-busy", String(busy));
  }

  #showError(text) {
    setText(this.el.error, text);
    this.el.error.hidden = !text;
  }
}

const panel = document.getElementById("takeaway-panel");
const button = document.getElementById("takeaway-start");
if (panel && button) {
  new TakeawayPanel({
    button,
    panel,
    elements: {
      status: document.getElementById("takeaway-status"),
      error: document.getElementById("takeaway-error"),
      link: document.getElementById("takeaway-link"),
      download: document.getElementById("takeaway-download"),
    },
    urls: { start: panel.dataset.start, latest: panel.dataset.latest },
    csrf: panel.dataset.csrf,
  }).start();
}

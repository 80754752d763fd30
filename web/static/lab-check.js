// "Check my work": the learner asks LabDesk to check their lab. The checks run inside the lab, as the
// grader account (the learner's browser only starts an attempt and reads it), one after another; the page
// follows the attempt every second: "Checking 2 of 4…", then ✓/✗ per check with its feedback, the hint of
// each failed one, and the score. In exam mode the results stay hidden until a date. On load the page
// shows the lab's latest attempt; an instructor watching a lab sees it too, without the button.

import { explain, outcome } from "./lab-api.js";
import { setText } from "./lab-progress.js";

const POLL_MS = 1000;
const WATCH_REFRESH_MS = 5000;
const GRADEBOOK_POLL_MS = 10000; // while the score is on its way to the LMS: "waiting" turns to "sent"
const GRADEBOOK_PENDING = new Set(["sending", "waiting"]);
const FINISHED = new Set(["done", "error"]);
const CHECK_DONE = new Set(["passed", "failed", "error", "done"]); // "done": finished, result hidden (exam mode)
const MARKS = {
  passed: { icon: "✓", spoken: "Passed" },
  failed: { icon: "✗", spoken: "Failed" },
  error: { icon: "!", spoken: "Could not be checked" },
  running: { icon: "…", spoken: "Checking now" },
  pending: { icon: "·", spoken: "Waiting" },
};

/** A number as people write scores: 7, 7.5, 6.67 (never 7.000000001). */
export function formatNumber(value) {
  const number = Number(value);
  if (!Number.isFinite(number)) return "";
  return String(Math.round(number * 100) / 100);
}

/** The server's datetimes are UTC; those without a zone designator are read as UTC, shown in local time. */
export function formatWhen(iso) {
  if (!iso) return "";
  const text = /[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`;
  const when = new Date(text);
  if (Number.isNaN(when.getTime())) return iso;
  // (dateStyle/timeStyle cannot be combined with timeZoneName: the parts are named one by one.)
  return when.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short",
  });
}

/** How far an attempt has got: finished checks, the one running (1-based), the total. */
export function progressOf(attempt) {
  const checks = attempt.checks || [];
  const finished = checks.filter((check) => CHECK_DONE.has(check.state)).length;
  return { finished, current: Math.min(finished + 1, checks.length), total: checks.length };
}

/** The one line that sums an attempt up (in the live region, with the score below it). */
export function summaryOf(attempt) {
  if (attempt.state === "queued") return "Waiting for the check to start…";
  if (attempt.state === "running") {
    const { current, total } = progressOf(attempt);
    return total ? `Checking ${current} of ${total}…` : "Checking…";
  }
  if (attempt.state === "error") {
    return `Your work could not be checked${attempt.error ? `: ${attempt.error.replace(/\.$/, "")}` : ""}. Try again in a moment.`;
  }
  if (attempt.results_hidden_until) {
    return `Your work was checked and saved. Results are hidden until ${formatWhen(attempt.results_hidden_until)}.`;
  }
  const checks = attempt.checks || [];
  const passed = checks.filter((check) => check.state === "passed").length;
  return `${passed} of ${checks.length} check${checks.length === 1 ? "" : "s"} passed.`;
}

/** "7 of 10", or "" when the attempt carries no score (running, hidden, not graded). */
export function scoreOf(attempt) {
  if (attempt.score_given === null || attempt.score_given === undefined) return "";
  if (attempt.score_maximum === null || attempt.score_maximum === undefined) return "";
  return `${formatNumber(attempt.score_given)} of ${formatNumber(attempt.score_maximum)}`;
}

export class CheckPanel {
  /**
   * `button` starts a check (absent when watching); `panel` holds the results; `urls.start` and
   * `urls.latest` are the lab's check API addresses; `csrf` the session's token.
   */
  constructor({ button, panel, elements, urls, csrf, watch }) {
    this.button = button;
    this.panel = panel;
    this.el = elements;
    this.urls = urls;
    this.csrf = csrf;
    this.watch = watch;
    this.attempt = null;
    this.attemptUrl = "";
    this.starting = false;
    this.lab = null;
    this.timer = null;
    this.lastWatchRefresh = 0;
  }

  start() {
    if (this.button) this.button.addEventListener("click", () => this.check());
    this.el.toggle.addEventListener("click", () => this.#toggle());
    this.#loadLatest();
  }

  /** The lab's status changed: the button is offered only for a running lab whose image has checks. */
  labChanged(lab) {
    this.lab = lab;
    const hasChecks = Number(lab.checks) > 0;
    if (this.button) this.button.hidden = !hasChecks;
    this.#renderButton();
    if (this.watch && hasChecks && !this.#busy() && Date.now() - this.lastWatchRefresh > WATCH_REFRESH_MS) {
      this.#loadLatest();
    }
  }

  /** "Check my work" was pressed. */
  async check() {
    if (this.#busy()) return;
    this.starting = true;
    this.#renderButton();
    this.#showError("");
    const result = await outcome(fetch(this.urls.start, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": this.csrf },
      body: "{}",
    }));
    this.starting = false;
    if (!result.ok) {
      this.#renderButton();
      this.#showError(explain(result));
      return;
    }
    this.#follow(result.body.attempt);
  }

  // -- following an attempt --------------------------------------------------------------------------

  async #loadLatest() {
    this.lastWatchRefresh = Date.now();
    const result = await outcome(fetch(this.urls.latest, { credentials: "same-origin", headers: { Accept: "application/json" } }));
    if (result.ok && result.body && result.body.id) this.#follow(result.body);
  }

  #follow(attempt) {
    this.attemptUrl = attempt.url || this.attemptUrl;
    this.#render(attempt);
    window.clearTimeout(this.timer);
    if (!FINISHED.has(attempt.state)) this.timer = window.setTimeout(() => this.#poll(), POLL_MS);
    else if (attempt.gradebook && GRADEBOOK_PENDING.has(attempt.gradebook.state)) {
      this.timer = window.setTimeout(() => this.#poll(), GRADEBOOK_POLL_MS);
    }
  }

  async #poll() {
    if (!this.attemptUrl) return;
    const result = await outcome(fetch(this.attemptUrl, { credentials: "same-origin", headers: { Accept: "application/json" } }));
    if (result.ok) {
      this.#showError("");
      this.#follow(result.body);
      return;
    }
    // A dropped network or a busy server: say so, keep following; a lost session or attempt: stop.
    this.#showError(explain(result));
    if (result.status === 0 || result.status >= 500) this.timer = window.setTimeout(() => this.#poll(), POLL_MS * 3);
    else this.#renderButton();
  }

  #busy() {
    return this.starting || Boolean(this.attempt && !FINISHED.has(this.attempt.state));
  }

  // -- rendering -------------------------------------------------------------------------------------

  #renderButton() {
    if (!this.button) return;
    const running = Boolean(this.lab && this.lab.state === "running");
    const busy = this.#busy();
    this.button.disabled = busy || !running;
    setText(this.button, busy ? "Checking…" : "Check my work");
    this.button.setAttribute("aria-describedby", running ? "check-live" : "check-needs-running");
    this.button.title = running ? "" : "Your lab must be running to check your work.";
  }

  #render(attempt) {
    this.attempt = attempt;
    const el = this.el;
    this.panel.hidden = false;
    this.panel.dataset.state = attempt.state;
    setText(el.status, summaryOf(attempt));
    el.status.classList.toggle("error", attempt.state === "error");

    const { finished, total } = progressOf(attempt);
    const working = !FINISHED.has(attempt.state);
    el.progress.hidden = !working;
    el.progress.max = Math.max(total, 1);
    el.progress.value = finished;
    el.progress.setAttribute("aria-valuetext", summaryOf(attempt));

    const score = attempt.state === "done" ? scoreOf(attempt) : "";
    el.score.hidden = !score;
    setText(el.score, score ? `Score: ${score}` : "");
    const gradebook = attempt.state === "done" && attempt.gradebook ? attempt.gradebook.message : "";
    el.gradebook.hidden = !gradebook;
    setText(el.gradebook, gradebook);

    const hiddenUntil = attempt.results_hidden_until;

    const when = attempt.finished_at || attempt.created_at;
    setText(el.when, when ? `${attempt.finished_at ? "Checked" : "Started"} ${formatWhen(when)}` : "");

    this.#renderChecks(attempt.checks || [], Boolean(hiddenUntil));
    this.#renderButton();
  }

  #renderChecks(checks, hidden) {
    const items = checks.map((check) => {
      const state = hidden && !MARKS[check.state] ? "hidden" : check.state;
      const item = document.createElement("li");
      item.className = `check check-${state}`;
      item.dataset.check = check.id;
      const mark = MARKS[state] || { icon: "•", spoken: hidden ? "Checked, result hidden" : state };
      const icon = document.createElement("span");
      icon.className = "check-icon";
      icon.setAttribute("aria-hidden", "true");
      icon.textContent = mark.icon;
      const spoken = document.createElement("span");
      spoken.className = "visually-hidden";
      spoken.textContent = `${mark.spoken}: `;
      const title = document.createElement("span");
      title.className = "check-title";
      title.textContent = check.title;
      const head = document.createElement("div");
      head.className = "check-head";
      head.append(icon, spoken, title);
      item.append(head);
      if (check.feedback) item.append(paragraph("check-feedback", check.feedback));
      if (check.hint && state !== "passed") item.append(paragraph("check-hint", `Hint: ${check.hint}`));
      return item;
    });
    this.el.list.replaceChildren(...items);
    this.el.list.hidden = items.length === 0;
  }

  #showError(message) {
    setText(this.el.error, message);
    this.el.error.hidden = !message;
    if (message) this.panel.hidden = false;
  }

  #toggle() {
    const open = this.el.body.hidden;
    this.el.body.hidden = !open;
    this.el.toggle.setAttribute("aria-expanded", String(open));
    setText(this.el.toggle, open ? "Hide results" : "Show results");
  }
}

function paragraph(className, text) {
  const p = document.createElement("p");
  p.className = className;
  p.textContent = text;
  return p;
}

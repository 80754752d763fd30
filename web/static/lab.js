// The lab page: start-up progress while the lab comes up, then its desktop through Guacamole. It keeps
// the lab awake while the learner works, reconnects after a dropped connection, and tells the broker when
// the learner leaves (tab closed, or no keyboard/mouse input for the idle limit), so the lab is suspended
// within seconds instead of running on at the institution's cost. An instructor watching (data-watch)
// sees the same desktop read-only and sends nothing but requests for frames.
import { LabApi, explain } from "./lab-api.js";
import { CheckPanel } from "./lab-check.js";
import { ClipboardBridge } from "./lab-clipboard.js";
import { Desktop } from "./lab-desktop.js";
import { IdleWatch } from "./lab-idle.js";
import { isStarting, problemOf, problemOfStatus, renderProblem, renderProgress, setText } from "./lab-progress.js";
import { Backoff, Countdown } from "./lab-reconnect.js";

const POLL_MS = { starting: 1500, connected: 5000, quiet: 10000 };
const RESIZE_DELAY_MS = 200;
const STABLE_MS = 10000; // a connection that lasted this long starts the back-off again from 1 s
const LAYOUT_KEY = "labdesk.keyboard-layout";
const RETRYABLE = new Set([0, 409, 429, 500, 502, 503, 504]);
const UPSTREAM_UNAVAILABLE = 0x0208; // guacamole-common-js's status for a socket closed "going away" (1001)

const byId = (id) => document.getElementById(id);
const VIEWER_MISSING = "The desktop viewer did not load. Reload the page; if this persists, tell your administrator.";
// Stands in for the desktop when guacamole-common-js did not load: the progress and presence still work.
const NO_VIEWER = { connected: false, connections: 0, open() {}, close() {}, resize() {}, sendClipboard: () => false };

function readConfig(root) {
  const data = root.dataset;
  return {
    api: data.api,
    home: data.home,
    csrf: data.csrf,
    watch: data.watch === "true",
    keepaliveSeconds: Number(data.keepalive) || 30,
    idleSeconds: Number(data.idleDisconnect) || 0,
    labels: JSON.parse(data.labels),
  };
}

/** A connection the server closed as "going away", without an error instruction of its own. */
function wentAway(status) {
  return Boolean(status) && status.code === UPSTREAM_UNAVAILABLE && !status.message;
}

function debounce(action, ms) {
  let timer = null;
  return () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(action, ms);
  };
}

/** "Ada (instructor) is viewing…" / "Ada (instructor) and Bob (instructor) are viewing…" */
export function watchersNotice(watchers) {
  const names = (watchers || []).map((w) => `${typeof w === "string" ? w : w.name} (instructor)`);
  if (names.length === 0) return "";
  const list = names.length === 1 ? names[0] : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
  return `${list} ${names.length === 1 ? "is" : "are"} viewing your desktop.`;
}

/** The saved keyboard layout, or the one matching the browser's language, among `options`. */
function chooseLayout(options) {
  const saved = window.localStorage.getItem(LAYOUT_KEY);
  if (saved && options.includes(saved)) return saved;
  const language = (navigator.language || "en-US").toLowerCase();
  const exact = options.find((name) => name.startsWith(`${language}-`));
  const sameTongue = options.find((name) => name.startsWith(`${language.split("-")[0]}-`));
  return exact || sameTongue || (options.includes("en-us-qwerty") ? "en-us-qwerty" : options[0] || "");
}

class LabPage {
  constructor(root) {
    this.config = readConfig(root);
    this.api = new LabApi(this.config.api, this.config.csrf);
    this.el = this.#elements();
    this.lab = null;
    this.phase = "waiting"; // waiting | connecting | connected | retrying | paused | stopped
    this.present = true; // the broker has not been told that the learner left
    this.host = "";
    this.protocol = "";
    this.backoff = new Backoff();
    this.retry = new Countdown((seconds) => this.#showRetry(seconds), () => this.#connect());
    this.desktop = !window.Guacamole ? NO_VIEWER : new Desktop({
      container: this.el.desktop,
      readOnly: this.config.watch,
      onConnected: () => this.#connected(),
      onEnded: (status, conflict) => this.#ended(status, conflict),
      onClipboard: (text) => this.clipboard && this.clipboard.received(text),
      onLeaveFocus: () => this.el.fullscreen.focus(),
    });
    this.clipboard = this.config.watch ? null : new ClipboardBridge({
      panel: this.el.clipboardPanel, toggle: this.el.clipboardToggle, textarea: this.el.clipboardText,
      status: this.el.clipboardStatus, desktop: this.el.desktop, send: (text) => this.desktop.sendClipboard(text),
    });
    this.check = !this.el.checkPanel ? null : new CheckPanel({
      button: this.el.checkStart,
      panel: this.el.checkPanel,
      elements: this.el.checks,
      urls: { start: this.el.checkPanel.dataset.start, latest: this.el.checkPanel.dataset.latest },
      csrf: this.config.csrf,
      watch: this.config.watch,
    });
    this.idle = this.config.watch || !this.config.idleSeconds ? null : new IdleWatch(this.config.idleSeconds, {
      onWarn: (seconds) => this.#idleWarning(seconds),
      onCalm: () => this.#idleCalm(),
      onIdle: () => this.#idleTimeout(),
    });
  }

  start() {
    this.#bindControls();
    this.#bindWindow();
    this.#fillLayouts();
    if (!this.config.watch) {
      this.api.keepalive();
      window.setInterval(() => this.#keepalive(), this.config.keepaliveSeconds * 1000);
    }
    if (this.idle) this.idle.start();
    if (this.check) this.check.start();
    this.#poll();
  }

  // -- the lab's status ------------------------------------------------------------------------------

  async #poll() {
    window.clearTimeout(this.pollTimer);
    await this.#refresh();
    const delay = this.phase === "connected" ? POLL_MS.connected
      : ["paused", "stopped"].includes(this.phase) ? POLL_MS.quiet : POLL_MS.starting;
    window.clearTimeout(this.pollTimer); // another poll may have finished meanwhile: keep one loop
    this.pollTimer = window.setTimeout(() => this.#poll(), delay);
  }

  async #refresh() {
    const result = await this.api.status();
    if (result.ok) this.#update(result.body);
    else this.#statusFailed(result);
    return result.ok ? result.body : null;
  }

  #update(lab) {
    this.lab = lab;
    const label = lab.queue ? this.config.labels.waiting_gpu : this.config.labels[lab.state];
    setText(this.el.state, label || lab.state);
    renderProgress(this.el.progress, lab);
    const problem = problemOf(lab, this.config.watch);
    renderProblem(this.el.problem, problem);
    this.#renderResume(lab, problem);
    if (!this.config.watch) this.#renderWatchers(lab.watchers);
    if (!this.config.watch) this.#renderWeeklyLimit(lab.weekly_limit);
    if (this.check) this.check.labChanged(lab);
    if (lab.state === "running" && this.phase === "waiting") this.#connect();
    else if (lab.state !== "running" && ["connecting", "connected", "retrying"].includes(this.phase)) this.#labStopped();
    this.#layout();
  }

  /** The lab is being suspended, reset or removed under the desktop: let go of it; the status says what next. */
  #labStopped() {
    this.desktop.close();
    this.#stopRetrying();
  }

  #statusFailed(result) {
    if (this.config.watch) {
      if (this.phase === "waiting") this.#connect(); // a watcher may not read the status: just try
      return;
    }
    const problem = problemOfStatus(result.status);
    if (problem) {
      renderProblem(this.el.problem, problem);
      this.phase = "stopped";
      this.retry.cancel();
    }
  }

  /** The hours of this lab left this week, when its instructor set a weekly limit (docs/limits.md). */
  #renderWeeklyLimit(limit) {
    const line = byId("weekly-limit");
    if (!line) return;
    const usedUp = Boolean(limit && limit.exhausted); // "Resume" would be refused: the line says until when
    this.el.resumeButton.disabled = usedUp;
    if (usedUp) this.el.resumeButton.setAttribute("aria-describedby", "weekly-limit");
    else this.el.resumeButton.removeAttribute("aria-describedby");
    line.hidden = !limit;
    if (!limit) return;
    setText(line, limit.text);
    line.classList.toggle("banner-warning", limit.exhausted);
    line.classList.toggle("banner-info", !limit.exhausted);
  }

  #renderResume(lab, problem) {
    const form = this.el.resume;
    if (this.config.watch) return;
    const action = problem ? problem.action : lab.state === "suspended" ? "Resume my lab" : "";
    form.hidden = !action;
    if (action) setText(this.el.resumeButton, action);
    this.el.resetOpen.hidden = lab.state === "deleted" || lab.state === "deleting";
  }

  #renderWatchers(watchers) {
    const notice = watchersNotice(watchers);
    setText(this.el.watchers, notice);
    this.el.watchers.hidden = !notice;
  }

  /** Which parts show: the progress while the lab starts, the desktop once it runs. */
  #layout() {
    const lab = this.lab;
    this.el.progressPanel.hidden = !(lab && isStarting(lab));
    const showDesktop = Boolean(lab && lab.state === "running") || this.desktop.connected;
    // After a deliberate disconnect, "Reconnect now" makes sense only while the lab still runs; otherwise
    // the resume form or the problem says what to do.
    if (lab && ["paused", "stopped"].includes(this.phase)) this.el.reconnect.hidden = lab.state !== "running";
    this.el.workspace.hidden = !showDesktop;
  }

  // -- the desktop connection ------------------------------------------------------------------------

  async #connect() {
    this.retry.cancel();
    if (this.desktop === NO_VIEWER) {
      this.#halt(VIEWER_MISSING);
      return;
    }
    this.phase = "connecting";
    this.#status(this.desktop.connections ? "Reconnecting…" : "Connecting to your desktop…");
    const result = await this.api.connection(this.host, this.config.watch);
    if (this.phase !== "connecting") return; // left, reset or switched meanwhile
    if (!result.ok) {
      this.#connectionRefused(result);
      return;
    }
    this.#showHosts(result.body);
    this.#layout();
    this.desktop.open(result.body, this.#layoutChoice());
  }

  async #connectionRefused(result) {
    const lab = await this.#refresh();
    if (lab && lab.state !== "running") {
      this.#stopRetrying();
      return;
    }
    if (RETRYABLE.has(result.status)) this.#lost(explain(result));
    else this.#halt(explain(result));
  }

  #connected() {
    this.phase = "connected";
    this.retry.cancel();
    this.el.reconnect.hidden = true;
    this.#status(this.config.watch ? "Watching (read-only)" : "Connected");
    window.clearTimeout(this.stableTimer);
    this.stableTimer = window.setTimeout(() => this.backoff.reset(), STABLE_MS);
    if (this.clipboard) this.clipboard.connected();
    const focused = document.activeElement;
    if (!this.config.watch && (!focused || focused === document.body)) this.el.desktop.focus({ preventScroll: true });
    this.#layout();
    this.#poll();
  }

  /** The connection closed without being asked to: reconnect with back-off (or not, for a conflict). */
  #ended(status, conflict) {
    window.clearTimeout(this.stableTimer);
    if (conflict) {
      this.#halt("Your desktop was opened in another tab or window.");
      return;
    }
    if (wentAway(status) && this.backoff.failures === 0) {
      this.#comeBack();
      return;
    }
    this.#lost(status && status.message ? status.message : "");
  }

  /** The tunnel process closed a working connection on purpose (restart, scale-in): another one takes
   * over at the same address, so reconnect at once with "Reconnecting…" and no alert. It counts as the
   * first failure: if this attempt fails too, the back-off and its banner take over. */
  #comeBack() {
    this.backoff.next();
    this.phase = "retrying";
    this.#connect();
  }

  #lost(reason) {
    this.phase = "retrying";
    this.lostReason = reason;
    this.#status("Connection lost");
    this.retry.start(this.backoff.next());
  }

  #showRetry(seconds) {
    this.#banner(`Connection lost — reconnecting in ${seconds} s…`, this.lostReason || "",
      "Connection lost. Reconnecting automatically; Reconnect now tries at once.");
  }

  /** The banner above the desktop. With `spoken` (when the visible text changes every second), screen
   * readers hear that steady sentence instead of every tick. */
  #banner(text, reason = "", spoken = "") {
    this.el.reconnect.hidden = false;
    setText(this.el.reconnectText, text);
    if (spoken) this.el.reconnectText.setAttribute("aria-hidden", "true");
    else this.el.reconnectText.removeAttribute("aria-hidden");
    setText(this.el.reconnectSpoken, spoken);
    setText(this.el.reconnectReason, reason);
  }

  /** Stop reconnecting, say why, and offer "Reconnect now". */
  #halt(message) {
    this.phase = "stopped";
    this.retry.cancel();
    this.#status("Disconnected");
    this.#banner(message);
  }

  /** The lab is no longer running: the status (resume form, problem) takes over from the banner. */
  #stopRetrying() {
    this.retry.cancel();
    this.phase = "waiting";
    this.el.reconnect.hidden = true;
    this.#status("");
  }

  /** Close on purpose and tell the broker the learner left (idle limit, Disconnect button). */
  #pause(message) {
    this.phase = "paused";
    this.retry.cancel();
    if (this.idle) this.idle.stop();
    this.desktop.close();
    this.#leave();
    this.#banner(message);
    this.#status("Disconnected");
  }

  #reconnectNow() {
    if (!this.present) {
      this.present = true;
      this.api.keepalive();
    }
    if (this.idle) this.idle.start();
    this.el.reconnect.hidden = true;
    this.desktop.close();
    this.#connect();
  }

  #switchConnection() {
    if (!["connected", "connecting", "retrying"].includes(this.phase)) return;
    this.desktop.close();
    this.backoff.reset();
    this.#connect();
  }

  #showHosts(grant) {
    this.host = grant.host || "";
    this.protocol = grant.protocol || "";
    const hosts = grant.hosts || [];
    const select = this.el.hostSelect;
    const names = hosts.map((h) => h.name).join("\n");
    if (select.dataset.names !== names) {
      select.dataset.names = names;
      select.replaceChildren(...hosts.map((h) => new Option(`${h.name} (${String(h.protocol).toUpperCase()})`, h.name)));
    }
    select.value = this.host;
    this.el.hostField.hidden = hosts.length < 2;
    if (this.el.layoutField) this.el.layoutField.hidden = this.protocol !== "rdp";
  }

  #status(text) {
    setText(this.el.connectionStatus, text);
  }

  // -- presence: keepalive, idle, leaving ------------------------------------------------------------

  #keepalive() {
    if (this.present && this.phase !== "paused") this.api.keepalive();
  }

  #leave() {
    if (this.present && !this.config.watch) this.api.leave();
    this.present = false;
  }

  /** The countdown: shown, its button focused (Enter keeps the session), announced every 10 s. */
  #idleWarning(seconds) {
    const el = this.el;
    setText(el.idleText, `You will be disconnected in ${seconds} s — move the mouse or press a key to stay.`);
    if (el.idleDialog.hidden) {
      el.idleDialog.hidden = false;
      this.focusBeforeIdle = document.activeElement;
      el.idleStay.focus({ preventScroll: true });
    }
    if (!el.idleSpoken.textContent || seconds % 10 === 0) {
      setText(el.idleSpoken, `You will be disconnected in ${seconds} seconds. Move the mouse or press a key to stay.`);
    }
  }

  /** Input ended the countdown: back to where the learner was (the desktop, usually). */
  #idleCalm() {
    const el = this.el;
    el.idleDialog.hidden = true;
    setText(el.idleSpoken, "");
    const back = this.focusBeforeIdle;
    this.focusBeforeIdle = null;
    if (document.activeElement === el.idleStay && back && back.isConnected) back.focus({ preventScroll: true });
  }

  #idleTimeout() {
    this.el.idleDialog.hidden = true;
    setText(this.el.idleSpoken, "");
    this.focusBeforeIdle = null;
    const minutes = Math.round(this.config.idleSeconds / 60);
    const span = minutes >= 1 ? `${minutes} minute${minutes === 1 ? "" : "s"}` : `${this.config.idleSeconds} seconds`;
    this.#pause(`Disconnected after ${span} without activity. Your lab is suspended soon and keeps your work.`);
    this.el.reconnectNow.focus({ preventScroll: true });
  }

  // -- controls --------------------------------------------------------------------------------------

  #bindControls() {
    const el = this.el;
    el.reconnectNow.addEventListener("click", () => this.#reconnectNow());
    el.fullscreen.addEventListener("click", () => this.#toggleFullscreen());
    el.hostSelect.addEventListener("change", () => { this.host = el.hostSelect.value; this.#switchConnection(); });
    if (this.config.watch) return;
    el.disconnect.addEventListener("click", () => this.#pause(
      "You disconnected. Your lab is suspended soon and keeps your work; reconnect to continue."));
    el.layoutSelect.addEventListener("change", () => {
      window.localStorage.setItem(LAYOUT_KEY, el.layoutSelect.value);
      if (this.protocol === "rdp") this.#switchConnection();
    });
    el.idleStay.addEventListener("click", () => this.idle && this.idle.poke());
    el.resetOpen.addEventListener("click", () => {
      setText(el.resetStatus, "");
      el.resetDialog.showModal();
    });
    el.resetConfirm.addEventListener("click", () => this.#reset());
  }

  async #reset() {
    const el = this.el;
    el.resetConfirm.disabled = true;
    setText(el.resetStatus, "Resetting your lab…");
    const result = await this.api.reset();
    if (!result.ok) {
      setText(el.resetStatus, explain(result));
      el.resetConfirm.disabled = false;
      return;
    }
    this.phase = "stopped";
    this.present = false; // the old lab is going away: no leave for it
    this.retry.cancel();
    this.desktop.close();
    window.location.assign(`${this.config.home}labs/${result.body.lab_id}`);
  }

  #fillLayouts() {
    const select = this.el.layoutSelect;
    if (!select) return;
    const options = Array.from(select.options, (option) => option.value);
    select.value = chooseLayout(options);
  }

  #layoutChoice() {
    return this.el.layoutSelect ? this.el.layoutSelect.value : "";
  }

  #toggleFullscreen() {
    if (document.fullscreenElement) document.exitFullscreen();
    else this.el.workspace.requestFullscreen().catch(() => this.#status("Full screen is not allowed here."));
  }

  #bindWindow() {
    // The desktop area's size follows the window and the panels around it (CSS); the lab follows it.
    const resized = debounce(() => this.desktop.resize(), RESIZE_DELAY_MS);
    window.addEventListener("resize", resized);
    new ResizeObserver(resized).observe(this.el.desktop);
    document.addEventListener("fullscreenchange", () => {
      const full = document.fullscreenElement === this.el.workspace;
      this.el.fullscreen.setAttribute("aria-pressed", String(full));
      setText(this.el.fullscreen, full ? "Exit full screen" : "Full screen");
      resized();
    });
    window.addEventListener("pagehide", () => this.#leave());
    window.addEventListener("pageshow", (event) => {
      if (!event.persisted) return;
      this.present = true;
      this.#keepalive();
      this.#reconnectNow();
    });
  }

  #elements() {
    return {
      state: byId("state"),
      progressPanel: byId("progress-panel"),
      progress: { stages: byId("stages"), bar: byId("progress"), percent: byId("progress-percent"), text: byId("progress-text") },
      problem: { panel: byId("problem"), title: byId("problem-title"), advice: byId("problem-advice") },
      resume: byId("resume"),
      resumeButton: byId("resume-button"),
      watchers: byId("watchers"),
      reconnect: byId("reconnect"),
      reconnectText: byId("reconnect-text"),
      reconnectSpoken: byId("reconnect-spoken"),
      reconnectReason: byId("reconnect-reason"),
      reconnectNow: byId("reconnect-now"),
      workspace: byId("workspace"),
      desktop: byId("desktop"),
      connectionStatus: byId("connection-status"),
      hostField: byId("host-field"),
      hostSelect: byId("host-select"),
      layoutField: byId("layout-field"),
      layoutSelect: byId("layout-select"),
      fullscreen: byId("fullscreen"),
      disconnect: byId("disconnect"),
      clipboardToggle: byId("clipboard-toggle"),
      clipboardPanel: byId("clipboard-panel"),
      clipboardText: byId("clipboard-text"),
      clipboardStatus: byId("clipboard-status"),
      resetOpen: byId("reset-open"),
      resetDialog: byId("reset-dialog"),
      resetConfirm: byId("reset-confirm"),
      resetStatus: byId("reset-status"),
      idleDialog: byId("idle-dialog"),
      idleText: byId("idle-text"),
      idleSpoken: byId("idle-spoken"),
      idleStay: byId("idle-stay"),
      checkStart: byId("check-start"),
      checkPanel: byId("check-panel"),
      checks: {
        status: byId("check-status"),
        error: byId("check-error"),
        when: byId("check-when"),
        toggle: byId("check-toggle"),
        body: byId("check-body"),
        progress: byId("check-progress"),
        score: byId("check-score"),
        gradebook: byId("check-gradebook"),
        list: byId("check-list"),
      },
    };
  }
}

const root = byId("lab");
if (root) new LabPage(root).start();

// Idle detection from the keyboard and the mouse (inside the desktop too), with a visible countdown
// before the page lets go of the lab.

const INPUT_EVENTS = ["keydown", "mousemove", "mousedown", "wheel", "touchstart", "pointerdown"];

/** How long the countdown lasts: a minute, or half the idle limit when that is shorter. */
export function warningSeconds(limitSeconds) {
  return Math.min(60, Math.floor(limitSeconds / 2));
}

export class IdleWatch {
  /** `onWarn(secondsLeft)` every second of the countdown, `onCalm()` when input ends it, `onIdle()` at zero. */
  constructor(limitSeconds, { onWarn, onCalm, onIdle }) {
    this.limitMs = limitSeconds * 1000;
    this.warnMs = warningSeconds(limitSeconds) * 1000;
    this.callbacks = { onWarn, onCalm, onIdle };
    this.lastInput = Date.now();
    this.warning = false;
    this.timer = null;
    // Capture on the window: it runs before the desktop's own handlers, which stop the events.
    INPUT_EVENTS.forEach((name) => window.addEventListener(name, () => this.poke(), { capture: true, passive: true }));
  }

  get running() {
    return this.timer !== null;
  }

  start() {
    this.lastInput = Date.now();
    if (this.timer === null && this.limitMs > 0) this.timer = window.setInterval(() => this.#tick(), 250);
  }

  stop() {
    window.clearInterval(this.timer);
    this.timer = null;
    this.#calm();
  }

  poke() {
    this.lastInput = Date.now();
    if (this.warning) this.#calm();
  }

  #tick() {
    const left = this.limitMs - (Date.now() - this.lastInput);
    if (left <= 0) {
      this.stop();
      this.callbacks.onIdle();
    } else if (left <= this.warnMs) {
      this.warning = true;
      this.callbacks.onWarn(Math.ceil(left / 1000));
    }
  }

  #calm() {
    if (!this.warning) return;
    this.warning = false;
    this.callbacks.onCalm();
  }
}

// Reconnection after a dropped connection: back-off 1, 2, 4, 8 … 30 s, shown as a countdown.

export const MAX_DELAY = 30;

export class Backoff {
  constructor() {
    this.failures = 0;
  }

  /** Seconds to wait before the next attempt. */
  next() {
    const delay = Math.min(MAX_DELAY, 2 ** this.failures);
    this.failures += 1;
    return delay;
  }

  reset() {
    this.failures = 0;
  }
}

/** A countdown that calls `onTick(secondsLeft)` each second and `onDone()` at zero; `cancel` stops it. */
export class Countdown {
  constructor(onTick, onDone) {
    this.onTick = onTick;
    this.onDone = onDone;
    this.timer = null;
  }

  start(seconds) {
    this.cancel();
    let left = seconds;
    this.onTick(left);
    this.timer = window.setInterval(() => {
      left -= 1;
      if (left > 0) {
        this.onTick(left);
        return;
      }
      this.cancel();
      this.onDone();
    }, 1000);
  }

  cancel() {
    window.clearInterval(this.timer);
    this.timer = null;
  }

  get active() {
    return this.timer !== null;
  }
}

// The clipboard both ways: text copied in the lab lands in the panel (and in the computer's clipboard
// when the browser allows it); text typed or pasted into the panel, or pasted into the desktop, becomes
// the lab's clipboard.

const SEND_DELAY_MS = 300;

async function mayReadClipboard() {
  try {
    const permission = await navigator.permissions.query({ name: "clipboard-read" });
    return permission.state === "granted";
  } catch (error) {
    return false;
  }
}

export class ClipboardBridge {
  /** `send(text)` gives text to the lab and answers whether it could (connected or not). */
  constructor({ panel, toggle, textarea, status, desktop, send }) {
    this.elements = { panel, toggle, textarea, status };
    this.send = send;
    this.shared = "";
    this.timer = null;
    toggle.addEventListener("click", () => this.#toggle());
    textarea.addEventListener("input", () => this.#later(() => this.#share(textarea.value, "Sent to the lab's clipboard.")));
    desktop.addEventListener("paste", (event) => this.#pasted(event));
    desktop.addEventListener("focus", () => this.#syncFromComputer());
  }

  /** Text copied inside the lab. */
  received(text) {
    this.shared = text;
    this.elements.textarea.value = text;
    this.#say("Copied in the lab: it is in the clipboard panel.");
    if (navigator.clipboard && document.hasFocus()) navigator.clipboard.writeText(text).catch(() => undefined);
  }

  /** After every (re)connection the lab gets the panel's text again. */
  connected() {
    const text = this.elements.textarea.value;
    if (text) this.send(text);
  }

  #toggle() {
    const open = this.elements.panel.hidden;
    this.elements.panel.hidden = !open;
    this.elements.toggle.setAttribute("aria-expanded", String(open));
    if (open) this.elements.textarea.focus();
  }

  #pasted(event) {
    const text = event.clipboardData ? event.clipboardData.getData("text/plain") : "";
    if (!text) return;
    event.preventDefault();
    this.elements.textarea.value = text;
    this.#share(text, "");
  }

  /** When the desktop gets focus, bring the computer's clipboard along if the browser already allows reading it. */
  async #syncFromComputer() {
    if (!navigator.clipboard || !(await mayReadClipboard())) return;
    try {
      const text = await navigator.clipboard.readText();
      if (text && text !== this.shared) {
        this.elements.textarea.value = text;
        this.#share(text, "");
      }
    } catch (error) {
      // The browser refused this time (no focus, no permission): the panel still works.
    }
  }

  #share(text, message) {
    if (text === this.shared) return;
    if (this.send(text)) {
      this.shared = text;
      if (message) this.#say(message);
    } else if (message) {
      this.#say("Not connected: the text is sent when the desktop connects.");
    }
  }

  #later(action) {
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(action, SEND_DELAY_MS);
  }

  #say(text) {
    this.elements.status.textContent = text;
  }
}

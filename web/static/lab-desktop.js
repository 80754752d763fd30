// The lab's desktop in the page: one Guacamole connection at a time through LabDesk's tunnel, shown
// scaled to fit, with the learner's keyboard and mouse (never a watcher's), the remote clipboard, and
// the window's size sent on resize. A token is single use, so each `open` takes a fresh grant.

const KEYSYM = {
  shift: [0xffe1, 0xffe2],
  ctrl: [0xffe3, 0xffe4],
  alt: [0xffe9, 0xffea],
  meta: [0xffe7, 0xffe8, 0xffeb, 0xffec],
  v: [0x76, 0x56],
};
const SESSION_CONFLICT = 0x0209;

function held(keyboard, keysyms) {
  return keysyms.some((keysym) => keyboard.pressed[keysym]);
}

/** The query string the tunnel reads: the token, the screen, the zone, the layout and what we can play. */
export function connectString(token, size, layout) {
  const params = new URLSearchParams();
  params.append("token", token);
  params.append("width", size.width);
  params.append("height", size.height);
  params.append("dpi", size.dpi);
  params.append("timezone", Intl.DateTimeFormat().resolvedOptions().timeZone || "");
  if (layout) params.append("layout", layout);
  params.append("audio", "audio/L16");
  params.append("image", "image/png");
  params.append("image", "image/jpeg");
  return params.toString();
}

/** Read a text clipboard stream to its end; other kinds of clipboard content are declined. */
function readClipboard(stream, mimetype, done) {
  if (!/^text\//.test(mimetype)) {
    stream.sendAck("Only text is shared with the page's clipboard", 0x0100);
    return;
  }
  const reader = new Guacamole.StringReader(stream);
  let text = "";
  reader.ontext = (part) => { text += part; };
  reader.onend = () => done(text);
}

export class Desktop {
  /**
   * `container`: the focusable element the display goes in. Callbacks: `onConnected()`, `onEnded(status)`
   * for a connection that closed without being asked to, `onClipboard(text)` for text copied in the lab,
   * `onLeaveFocus()` when the learner presses Ctrl+Alt+Shift to move out of the desktop.
   */
  constructor({ container, readOnly, onConnected, onEnded, onClipboard, onLeaveFocus }) {
    this.container = container;
    this.readOnly = readOnly;
    this.callbacks = { onConnected, onEnded, onClipboard, onLeaveFocus };
    this.session = null;
    this.shown = null;
    this.sentSize = "";
    this.connections = 0;
    if (!readOnly) this.#attachKeyboard();
    container.addEventListener("mousedown", () => container.focus({ preventScroll: true }));
  }

  /** Connect with a grant from the API ({token, tunnel_url}); a current connection is closed first. */
  open(grant, layout) {
    this.close();
    const tunnel = new Guacamole.WebSocketTunnel(grant.tunnel_url);
    const client = new Guacamole.Client(tunnel);
    const session = { tunnel, client, display: client.getDisplay(), closing: false, ended: false, status: null };
    this.session = session;
    this.#wire(session);
    const size = this.size();
    this.sentSize = `${size.width}x${size.height}`;
    try {
      client.connect(connectString(grant.token, size, layout));
    } catch (status) {
      session.status = status;
      this.#ended(session);
    }
  }

  /** Close the connection on purpose (leaving, idle, switching machine): no reconnection follows. */
  close() {
    const session = this.session;
    if (!session) return;
    session.closing = true;
    this.#releaseKeys();
    session.client.disconnect();
    this.session = null;
    this.container.classList.add("stale");
  }

  get connected() {
    return Boolean(this.session && this.session.connected);
  }

  /** The canvas size to ask for: the container in device pixels, so the desktop is sharp. */
  size() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(320, this.container.clientWidth);
    const height = Math.max(240, this.container.clientHeight);
    return { width: Math.round(width * ratio), height: Math.round(height * ratio), dpi: Math.round(96 * ratio) };
  }

  /** After the window or the container changed size: ask the lab for the new size, and fit what is shown. */
  resize() {
    const session = this.session;
    if (session && session.connected && !this.readOnly) {
      const size = this.size();
      const key = `${size.width}x${size.height}`;
      if (key !== this.sentSize) {
        this.sentSize = key;
        session.client.sendSize(size.width, size.height);
      }
    }
    this.fit();
  }

  /** Scale the shown display to fit the container (never above its own size). */
  fit() {
    if (!this.shown) return;
    const display = this.shown.display;
    const width = display.getWidth();
    const height = display.getHeight();
    if (!width || !height) return;
    const scale = Math.min(1, this.container.clientWidth / width, this.container.clientHeight / height);
    if (scale > 0 && Math.abs(scale - display.getScale()) > 0.001) display.scale(scale);
  }

  /** Make `text` the lab's clipboard (learners only). */
  sendClipboard(text) {
    const session = this.session;
    if (this.readOnly || !session || !session.connected) return false;
    const writer = new Guacamole.StringWriter(session.client.createClipboardStream("text/plain"));
    writer.sendText(text);
    writer.sendEnd();
    return true;
  }

  #wire(session) {
    const { client, tunnel, display } = session;
    client.onstatechange = (state) => {
      if (state === Guacamole.Client.State.CONNECTED) this.#connected(session);
      else if (state === Guacamole.Client.State.DISCONNECTED) this.#ended(session);
    };
    client.onerror = (status) => { session.status = status; };
    tunnel.onerror = (status) => { session.status = session.status || status; };
    tunnel.onstatechange = (state) => {
      if (state === Guacamole.Tunnel.State.CLOSED) this.#ended(session);
    };
    client.onclipboard = (stream, mimetype) => {
      if (this.readOnly) stream.sendAck("Read-only", 0x0100);
      else readClipboard(stream, mimetype, (text) => this.callbacks.onClipboard(text));
    };
    display.onresize = () => { if (this.shown === session) this.fit(); };
    if (!this.readOnly) this.#attachMouse(session);
  }

  #connected(session) {
    if (session !== this.session) return;
    session.connected = true;
    this.connections += 1;
    this.container.dataset.connections = String(this.connections);
    this.#show(session);
    this.container.classList.remove("stale");
    this.resize();
    this.callbacks.onConnected();
  }

  #ended(session) {
    if (session.ended) return;
    session.ended = true;
    session.connected = false;
    session.client.disconnect();
    if (session !== this.session) return;
    this.session = null;
    this.#releaseKeys();
    this.container.classList.add("stale");
    if (!session.closing) this.callbacks.onEnded(session.status, session.status && session.status.code === SESSION_CONFLICT);
  }

  /** Put a connection's display in the container (the previous frame stays until a new one is ready). */
  #show(session) {
    this.shown = session;
    this.container.replaceChildren(session.display.getElement());
    this.fit();
  }

  #attachMouse(session) {
    const { client, display } = session;
    const mouse = new Guacamole.Mouse(display.getElement());
    mouse.onEach(["mousedown", "mousemove", "mouseup"], (event) => {
      if (session === this.session && session.connected) client.sendMouseState(event.state, true);
    });
    mouse.on("mouseout", () => display.showCursor(false));
    display.oncursor = (canvas, x, y) => display.showCursor(!mouse.setCursor(canvas, x, y));
  }

  /** Keys go to the lab only while the desktop has focus; every held key is released when it loses it. */
  #attachKeyboard() {
    const keyboard = new Guacamole.Keyboard(this.container);
    keyboard.onkeydown = (keysym) => {
      if (held(keyboard, KEYSYM.ctrl) && held(keyboard, KEYSYM.alt) && held(keyboard, KEYSYM.shift)) {
        window.setTimeout(() => { this.#releaseKeys(); this.callbacks.onLeaveFocus(); }, 0);
        return false;
      }
      this.#sendKey(1, keysym);
      // Ctrl+V / Cmd+V reach the browser too, so its `paste` event can hand the text to the lab first.
      return KEYSYM.v.includes(keysym) && (held(keyboard, KEYSYM.ctrl) || held(keyboard, KEYSYM.meta));
    };
    keyboard.onkeyup = (keysym) => this.#sendKey(0, keysym);
    this.keyboard = keyboard;
    this.container.addEventListener("blur", () => this.#releaseKeys());
    window.addEventListener("blur", () => this.#releaseKeys());
  }

  #sendKey(pressed, keysym) {
    const session = this.session;
    if (session && session.connected) session.client.sendKeyEvent(pressed, keysym);
  }

  #releaseKeys() {
    if (this.keyboard) this.keyboard.reset();
  }
}

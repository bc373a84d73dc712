/**
 * terminal.js: the console's terminal. Three parts, no dependency:
 *
 * - `AnsiState`: one output stream's SGR state (colours, bold, ...) and the tail of an escape
 *   sequence or a "\r" split across two chunks. Renders SGR 0/1/2/3/4/22/23/24/30-37/39/40-47/
 *   49/90-97/100-107 and 38;5 / 38;2 / 48;5 / 48;2; every other escape sequence is dropped.
 * - `Term`: the model of one execution's output: finished lines as HTML strings (only the last
 *   MAX_LINES kept, the rest counted in `base`) and the open last line as segments.
 * - `TerminalView`: puts a Term in the page. `render()` is called once per animation frame by
 *   the console; it appends what is new, keeps at most MAX_LINES line elements, and follows the
 *   bottom unless the user scrolled up.
 */

export const MAX_LINES = 10000;
// A line that never ends (a progress bar written without "\n") is broken here so that one
// element never grows without bound.
const OPEN_LINE_MAX_CHARS = 65536;
// An escape sequence longer than this is not one: its bytes are shown rather than carried.
const MAX_CARRY_CHARS = 256;

const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}

// CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), two-byte escapes, line ends.
const TOKEN =
  /\x1b\[([0-9;:?<=>]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|\r\n|\n|\r/g;
const COMPLETE_ESCAPE =
  /^(?:\x1b\[[0-9;:?<=>]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_])/;
// C0 controls other than tab, and DEL: not printable, dropped.
const CONTROLS = /[\x00-\x08\x0b-\x1f\x7f]/g;

/** The RGB of xterm's 256-colour palette entries 16-255 ("r,g,b"); 0-15 are CSS classes. */
function xterm256(n) {
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `${v},${v},${v}`;
  }
  const i = n - 16;
  const level = (k) => (k === 0 ? 0 : 55 + k * 40);
  return `${level(Math.floor(i / 36))},${level(Math.floor(i / 6) % 6)},${level(i % 6)}`;
}

// 24-bit and 256-colour SGR colours become classes (`fr-10-20-250`, `gr-...`) whose rules are
// added once each through the CSSOM: the console's Content-Security-Policy allows no inline
// style attribute, and CSP does not govern rules inserted into a constructed stylesheet.
const RGB_CLASSES = new Set();
let rgbSheet = null;

function rgbClass(kind, rgb) {
  const name = `${kind}r-${rgb.replaceAll(",", "-")}`;
  if (!RGB_CLASSES.has(name)) {
    RGB_CLASSES.add(name);
    if (typeof document !== "undefined" && typeof CSSStyleSheet === "function") {
      if (!rgbSheet) {
        rgbSheet = new CSSStyleSheet();
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, rgbSheet];
      }
      const prop = kind === "f" ? "color" : "background-color";
      rgbSheet.insertRule(`.${name} { ${prop}: rgb(${rgb}); }`, rgbSheet.cssRules.length);
    }
  }
  return name;
}

function clampByte(v) {
  return Math.max(0, Math.min(255, Number.isFinite(v) ? v : 0));
}

export class AnsiState {
  constructor() {
    this.reset();
    this.carry = "";
  }

  reset() {
    this.fg = null; // {pal: 0-15} or {rgb: "r,g,b"}
    this.bg = null;
    this.bold = false;
    this.dim = false;
    this.italic = false;
    this.underline = false;
  }

  /** Apply the parameters of one `ESC [ ... m`. */
  sgr(paramText) {
    const ps = paramText === "" ? [0] : paramText.split(/[;:]/).map((p) => (p === "" ? 0 : +p));
    for (let i = 0; i < ps.length; i++) {
      const p = ps[i];
      if (p === 0) this.reset();
      else if (p === 1) this.bold = true;
      else if (p === 2) this.dim = true;
      else if (p === 3) this.italic = true;
      else if (p === 4) this.underline = true;
      else if (p === 22) this.bold = this.dim = false;
      else if (p === 23) this.italic = false;
      else if (p === 24) this.underline = false;
      else if (p >= 30 && p <= 37) this.fg = { pal: p - 30 };
      else if (p >= 90 && p <= 97) this.fg = { pal: p - 90 + 8 };
      else if (p === 39) this.fg = null;
      else if (p >= 40 && p <= 47) this.bg = { pal: p - 40 };
      else if (p >= 100 && p <= 107) this.bg = { pal: p - 100 + 8 };
      else if (p === 49) this.bg = null;
      else if (p === 38 || p === 48) {
        let colour = null;
        if (ps[i + 1] === 5 && i + 2 < ps.length) {
          const n = ps[i + 2];
          if (n >= 0 && n <= 255) colour = n < 16 ? { pal: n } : { rgb: xterm256(n) };
          i += 2;
        } else if (ps[i + 1] === 2 && i + 4 < ps.length) {
          const [r, g, b] = [ps[i + 2], ps[i + 3], ps[i + 4]].map(clampByte);
          colour = { rgb: `${r},${g},${b}` };
          i += 4;
        } else {
          break; // malformed: ignore the rest of this sequence
        }
        if (p === 38) this.fg = colour;
        else this.bg = colour;
      }
    }
  }

  /** The class list of text written now on `streamClass` ("o" or "e"). */
  look(streamClass) {
    let cls = streamClass;
    if (this.fg) cls += this.fg.pal !== undefined ? ` f${this.fg.pal}` : ` ${rgbClass("f", this.fg.rgb)}`;
    if (this.bg) cls += this.bg.pal !== undefined ? ` g${this.bg.pal}` : ` ${rgbClass("g", this.bg.rgb)}`;
    if (this.bold) cls += " b";
    if (this.dim) cls += " d";
    if (this.italic) cls += " i";
    if (this.underline) cls += " u";
    return cls;
  }
}

function segmentsHtml(segments) {
  let html = "";
  let i = 0;
  while (i < segments.length) {
    const { cls } = segments[i];
    let text = segments[i].text;
    // Neighbours that look the same become one span.
    let next = segments[i + 1];
    while (next && next.cls === cls) {
      text += next.text;
      next = segments[++i + 1];
    }
    i++;
    html += `<span class="${cls}">${escapeHtml(text)}</span>`;
  }
  return html;
}

export class Term {
  constructor() {
    this.lines = []; // HTML of finished lines; lines[i] is line number base + i
    this.base = 0; // finished lines dropped from the front (older than the last MAX_LINES)
    this.open = []; // segments of the unfinished last line: {text, cls}
    this.openChars = 0;
    this.openStderr = false;
    this.streams = { stdout: new AnsiState(), stderr: new AnsiState() };
    this.outputChars = 0;
  }

  /** Line count so far (finished lines). */
  get total() {
    return this.base + this.lines.length;
  }

  /** Append a chunk of `stream` ("stdout" or "stderr"); escape sequences may span chunks. */
  write(stream, chunk) {
    const state = this.streams[stream] || this.streams.stdout;
    const streamClass = stream === "stderr" ? "e" : "o";
    let text = state.carry + chunk;
    state.carry = "";
    this.outputChars += chunk.length;
    // Keep an unfinished escape sequence, or a "\r" that may be the start of "\r\n".
    const esc = text.lastIndexOf("\x1b");
    if (esc >= 0 && text.length - esc < MAX_CARRY_CHARS && !COMPLETE_ESCAPE.test(text.slice(esc))) {
      state.carry = text.slice(esc);
      text = text.slice(0, esc);
    } else if (text.endsWith("\r")) {
      state.carry = "\r";
      text = text.slice(0, -1);
    }
    TOKEN.lastIndex = 0;
    let last = 0;
    let m;
    while ((m = TOKEN.exec(text)) !== null) {
      if (m.index > last) this._text(text.slice(last, m.index), state, streamClass);
      const token = m[0];
      if (token === "\n" || token === "\r\n") this._newline();
      else if (token === "\r") this._carriageReturn();
      else if (m[2] === "m" && token.startsWith("\x1b[")) state.sgr(m[1]);
      last = TOKEN.lastIndex;
    }
    if (last < text.length) this._text(text.slice(last), state, streamClass);
  }

  /** A line written by the console itself (a step header, the summary): never output. */
  meta(text, kind = "") {
    if (this.open.length) this._newline();
    this._push(`<div class="l meta ${kind}">${escapeHtml(text)}</div>`);
  }

  /** The HTML of the unfinished last line, "" when there is none. */
  openHtml() {
    if (!this.open.length) return "";
    return `<div class="l${this.openStderr ? " x" : ""}">${segmentsHtml(this.open)}</div>`;
  }

  _text(raw, state, streamClass) {
    const text = raw.replace(CONTROLS, "");
    if (!text) return;
    const cls = state.look(streamClass);
    this.open.push({ text, cls });
    this.openChars += text.length;
    if (streamClass === "e") this.openStderr = true;
    if (this.openChars > OPEN_LINE_MAX_CHARS) this._newline();
  }

  _newline() {
    this._push(`<div class="l${this.openStderr ? " x" : ""}">${segmentsHtml(this.open)}</div>`);
    this.open = [];
    this.openChars = 0;
    this.openStderr = false;
  }

  _carriageReturn() {
    // A carriage return rewinds the line: what follows overwrites it (progress bars).
    this.open = [];
    this.openChars = 0;
    this.openStderr = false;
  }

  _push(html) {
    this.lines.push(html);
    // Trim in batches: one splice per 2,000 lines rather than a shift per line.
    if (this.lines.length > MAX_LINES + 2000) {
      const drop = this.lines.length - MAX_LINES;
      this.lines.splice(0, drop);
      this.base += drop;
    }
  }
}

// Lines go into blocks of BLOCK_LINES: a block off screen is skipped by layout and paint
// (`content-visibility: auto` in console.css), and trimming the front is mostly dropping
// whole blocks.
const BLOCK_LINES = 500;
// Scroll events this long after a wheel, touch or key event are the user's (smooth scrolling
// goes on for a few hundred ms after the last wheel event).
const USER_SCROLL_MS = 1500;

function removeFirstChildren(el, count) {
  if (count <= 0) return;
  const range = document.createRange();
  range.setStartBefore(el.firstChild);
  range.setEndBefore(el.children[count]);
  range.deleteContents();
}

export class TerminalView {
  /**
   * scroller: the scrolling element; linesEl: the blocks' parent; noteEl: the note on hidden
   * lines; followEl: the button shown while auto-scroll is paused.
   */
  constructor({ scroller, linesEl, noteEl, followEl, onChange }) {
    this.scroller = scroller;
    this.linesEl = linesEl;
    this.noteEl = noteEl;
    this.followEl = followEl;
    this.onChange = onChange || (() => {});
    this.term = null;
    this.stick = true;
    this.blocks = []; // {el, count}
    this.domStart = 0; // line number of the first finished line element
    this.domEnd = 0; // line number after the last finished line element
    this.openBox = null; // holds the unfinished last line
    this.hasOpen = false;
    // Only the user pauses or resumes auto-scroll. Trimming the front can move the scroll
    // position too (clamped to the bottom when a slow frame replaced every line on screen):
    // a scroll event with no user input just before it changes nothing.
    this._userInputAt = -Infinity;
    // A wheel turned up just now: the scroll events that follow it never resume auto-scroll,
    // even at the bottom (the flood's trimming can clamp the view there meanwhile).
    this._upAt = -Infinity;
    this._dragging = false;
    const input = () => (this._userInputAt = performance.now());
    // Scrolling up is an intent to read: pause at once, before a frame scrolls to the bottom.
    scroller.addEventListener(
      "wheel",
      (e) => {
        input();
        this._upAt = e.deltaY < 0 ? performance.now() : -Infinity;
        if (e.deltaY < 0) this._pause();
      },
      { passive: true },
    );
    scroller.addEventListener(
      "keydown",
      (e) => {
        input();
        if (["ArrowUp", "PageUp", "Home"].includes(e.key)) this._pause();
      },
      { passive: true },
    );
    scroller.addEventListener("touchmove", input, { passive: true });
    scroller.addEventListener("pointerdown", () => (this._dragging = true)); // the scrollbar
    window.addEventListener("pointerup", () => {
      if (this._dragging) input();
      this._dragging = false;
    });
    scroller.addEventListener("scroll", () => this._onScroll(), { passive: true });
    followEl.addEventListener("click", () => this.follow());
  }

  show(term) {
    this.term = term;
    this._clear(term ? Math.max(term.base, term.total - MAX_LINES) : 0);
    this.stick = true;
    this._showFollow();
    this.render();
  }

  follow() {
    this.stick = true;
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this._showFollow();
  }

  /** Bring the page up to date with the model; cheap when nothing changed. */
  render() {
    const term = this.term;
    if (!term) return;
    const openHtml = term.openHtml();
    const total = term.total;
    const first = Math.max(term.base, total - (MAX_LINES - (openHtml ? 1 : 0)));
    // New lines first, then the trim: the content never shrinks under the viewport, so a
    // paused view keeps its place (scroll anchoring) instead of being clamped somewhere.
    if (this.domEnd < first) {
      // Everything on screen is older than what is kept: new blocks, then the old ones go.
      const old = this.blocks;
      this.blocks = [];
      this._append(term.lines.slice(first - term.base, total - term.base));
      for (const block of old) block.el.remove();
      this.domStart = first;
      this.domEnd = total;
    } else {
      if (total > this.domEnd) {
        this._append(term.lines.slice(this.domEnd - term.base, total - term.base));
        this.domEnd = total;
      }
      if (this.domStart < first) {
        this._dropFront(first - this.domStart);
        this.domStart = first;
      }
    }
    if (openHtml || this.hasOpen) {
      this.openBox.innerHTML = openHtml;
      this.hasOpen = openHtml !== "";
    }
    this._note();
    if (this.stick) this.scroller.scrollTop = this.scroller.scrollHeight;
    this.onChange(this);
  }

  /** Line elements in the page (finished lines and the open one). */
  get domLines() {
    return this.domEnd - this.domStart + (this.hasOpen ? 1 : 0);
  }

  get hiddenLines() {
    return this.domStart;
  }

  _clear(at) {
    this.linesEl.textContent = "";
    this.blocks = [];
    this.openBox = document.createElement("div");
    this.openBox.className = "open-line";
    this.linesEl.append(this.openBox);
    this.hasOpen = false;
    this.domStart = this.domEnd = at;
  }

  _append(htmlLines) {
    let i = 0;
    const last = this.blocks[this.blocks.length - 1];
    if (last && last.count < BLOCK_LINES) {
      const take = Math.min(BLOCK_LINES - last.count, htmlLines.length);
      last.el.insertAdjacentHTML("beforeend", htmlLines.slice(0, take).join(""));
      last.count += take;
      i = take;
    }
    if (i >= htmlLines.length) return;
    let html = "";
    const counts = [];
    for (; i < htmlLines.length; i += BLOCK_LINES) {
      const part = htmlLines.slice(i, i + BLOCK_LINES);
      html += `<div class="blk">${part.join("")}</div>`;
      counts.push(part.length);
    }
    this.openBox.insertAdjacentHTML("beforebegin", html);
    // The new blocks are the elements just before openBox.
    let node = this.openBox;
    const added = [];
    for (let k = 0; k < counts.length; k++) {
      node = node.previousElementSibling;
      added.unshift(node);
    }
    added.forEach((el, k) => this.blocks.push({ el, count: counts[k] }));
  }

  _dropFront(count) {
    while (count > 0 && this.blocks.length) {
      const head = this.blocks[0];
      if (head.count <= count) {
        head.el.remove();
        this.blocks.shift();
        count -= head.count;
      } else {
        removeFirstChildren(head.el, count);
        head.count -= count;
        count = 0;
      }
    }
  }

  _note() {
    const hidden = this.domStart;
    if (hidden > 0) {
      this.noteEl.hidden = false;
      this.noteEl.dataset.hidden = String(hidden);
      this.noteEl.textContent =
        `${hidden.toLocaleString("en-US")} earlier lines hidden: the page keeps the last ` +
        `${MAX_LINES.toLocaleString("en-US")}. Download the output for all of it.`;
    } else if (!this.noteEl.hidden) {
      this.noteEl.hidden = true;
      this.noteEl.dataset.hidden = "0";
    }
  }

  _onScroll() {
    const byUser = this._dragging || performance.now() - this._userInputAt < USER_SCROLL_MS;
    if (!byUser) return;
    const s = this.scroller;
    const atBottom = s.scrollHeight - s.scrollTop - s.clientHeight < 24;
    if (atBottom && performance.now() - this._upAt < USER_SCROLL_MS) return;
    if (atBottom !== this.stick) {
      this.stick = atBottom;
      this._showFollow();
    }
  }

  _pause() {
    if (this.stick) {
      this.stick = false;
      this._showFollow();
    }
  }

  _showFollow() {
    this.followEl.hidden = this.stick;
    this.scroller.dataset.following = String(this.stick);
  }
}

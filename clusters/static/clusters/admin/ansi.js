/*
 * Terminal colour codes (ANSI SGR escape sequences) to HTML.
 *
 * Text is HTML-escaped before anything is added around it, so output can never inject markup. Colours become
 * CSS classes (ansi-fg-N, ansi-bg-N for the 16 basic colours) or, for 256-colour and true-colour codes, an inline
 * colour computed from numbers only. Escape sequences other than SGR (cursor movement, titles) are dropped.
 *
 * A converter keeps its state between calls, so a colour opened on one line carries on to the next until reset.
 */
(function (global) {
  "use strict";

  // CSI sequences (ESC [ params final), OSC sequences (ESC ] ... BEL|ST) and two-character escapes.
  var ESCAPE_RE = /\x1b\[([0-9;:?]*)([ -\/]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;
  var HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, function (c) { return HTML_ESCAPES[c]; });
  }

  function clampByte(value) {
    var n = parseInt(value, 10);
    if (isNaN(n)) { return 0; }
    return Math.max(0, Math.min(255, n));
  }

  // Colour of an xterm 256-colour index above 15, as "r,g,b".
  function xtermColour(index) {
    if (index >= 232) {
      var grey = 8 + (index - 232) * 10;
      return grey + "," + grey + "," + grey;
    }
    var n = index - 16;
    var steps = [0, 95, 135, 175, 215, 255];
    return steps[Math.floor(n / 36) % 6] + "," + steps[Math.floor(n / 6) % 6] + "," + steps[n % 6];
  }

  function initialState() {
    return { fg: null, bg: null, fgRgb: null, bgRgb: null, bold: false, dim: false, italic: false, underline: false, inverse: false };
  }

  function AnsiConverter() {
    this.state = initialState();
  }

  AnsiConverter.prototype.reset = function () {
    this.state = initialState();
  };

  // Reads an extended colour (38/48) starting at params[i]; returns [colour, consumed] where colour is
  // {index: n} or {rgb: "r,g,b"}.
  function extendedColour(params, i) {
    var mode = params[i + 1];
    if (mode === 5 && params.length > i + 2) {
      var index = Math.max(0, Math.min(255, params[i + 2]));
      return [index < 16 ? { index: index } : { rgb: xtermColour(index) }, 2];
    }
    if (mode === 2 && params.length > i + 4) {
      return [{ rgb: clampByte(params[i + 2]) + "," + clampByte(params[i + 3]) + "," + clampByte(params[i + 4]) }, 4];
    }
    return [null, params.length - i];
  }

  AnsiConverter.prototype.applySgr = function (paramText) {
    var params = paramText === "" ? [0] : paramText.split(/[;:]/).map(function (p) { return p === "" ? 0 : parseInt(p, 10); });
    var s = this.state;
    for (var i = 0; i < params.length; i++) {
      var code = params[i];
      if (isNaN(code)) { continue; }
      if (code === 0) { this.state = s = initialState(); }
      else if (code === 1) { s.bold = true; }
      else if (code === 2) { s.dim = true; }
      else if (code === 3) { s.italic = true; }
      else if (code === 4) { s.underline = true; }
      else if (code === 7) { s.inverse = true; }
      else if (code === 22) { s.bold = false; s.dim = false; }
      else if (code === 23) { s.italic = false; }
      else if (code === 24) { s.underline = false; }
      else if (code === 27) { s.inverse = false; }
      else if (code >= 30 && code <= 37) { s.fg = code - 30; s.fgRgb = null; }
      else if (code === 39) { s.fg = null; s.fgRgb = null; }
      else if (code >= 40 && code <= 47) { s.bg = code - 40; s.bgRgb = null; }
      else if (code === 49) { s.bg = null; s.bgRgb = null; }
      else if (code >= 90 && code <= 97) { s.fg = code - 90 + 8; s.fgRgb = null; }
      else if (code >= 100 && code <= 107) { s.bg = code - 100 + 8; s.bgRgb = null; }
      else if (code === 38 || code === 48) {
        var result = extendedColour(params, i);
        var colour = result[0];
        i += result[1];
        if (colour) {
          if (code === 38) { s.fg = colour.index === undefined ? null : colour.index; s.fgRgb = colour.rgb || null; }
          else { s.bg = colour.index === undefined ? null : colour.index; s.bgRgb = colour.rgb || null; }
        }
      }
    }
  };

  AnsiConverter.prototype.openTag = function () {
    var s = this.state;
    var classes = [];
    var styles = [];
    var fg = s.fg, bg = s.bg, fgRgb = s.fgRgb, bgRgb = s.bgRgb;
    if (s.inverse) {
      fg = s.bg; bg = s.fg; fgRgb = s.bgRgb; bgRgb = s.fgRgb;
      if (fg === null && !fgRgb) { classes.push("ansi-inverse-fg"); }
      if (bg === null && !bgRgb) { classes.push("ansi-inverse-bg"); }
    }
    if (fg !== null && fg !== undefined) { classes.push("ansi-fg-" + fg); }
    if (bg !== null && bg !== undefined) { classes.push("ansi-bg-" + bg); }
    if (fgRgb) { styles.push("color:rgb(" + fgRgb + ")"); }
    if (bgRgb) { styles.push("background-color:rgb(" + bgRgb + ")"); }
    if (s.bold) { classes.push("ansi-bold"); }
    if (s.dim) { classes.push("ansi-dim"); }
    if (s.italic) { classes.push("ansi-italic"); }
    if (s.underline) { classes.push("ansi-underline"); }
    if (!classes.length && !styles.length) { return ""; }
    return '<span' + (classes.length ? ' class="' + classes.join(" ") + '"' : "") +
      (styles.length ? ' style="' + styles.join(";") + '"' : "") + ">";
  };

  // HTML for one piece of text (any line breaks are kept as they are).
  AnsiConverter.prototype.toHtml = function (text) {
    var html = "";
    var last = 0;
    var match;
    ESCAPE_RE.lastIndex = 0;
    var self = this;
    function emit(chunk) {
      if (!chunk) { return; }
      var open = self.openTag();
      html += open + escapeHtml(chunk) + (open ? "</span>" : "");
    }
    while ((match = ESCAPE_RE.exec(text)) !== null) {
      emit(text.slice(last, match.index));
      if (match[3] === "m" && !match[2]) { this.applySgr(match[1] || ""); }
      last = ESCAPE_RE.lastIndex;
    }
    emit(text.slice(last));
    return html;
  };

  // Plain text without escape sequences.
  function stripAnsi(text) {
    return text.replace(ESCAPE_RE, "");
  }

  global.Rke2Ansi = {
    Converter: AnsiConverter,
    toHtml: function (text) { return new AnsiConverter().toHtml(text); },
    escapeHtml: escapeHtml,
    strip: stripAnsi,
  };
})(window);

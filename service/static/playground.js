// The nextword playground: a phone keyboard's suggestion bar over a text area.
//
// A client of the public API only (POST v1/suggest, URLs relative to the page). On every edit
// each row (words, phrases) asks for the text before the cursor at once; a row keeps at most
// MAX_IN_FLIGHT requests outstanding (the newest edit waits for a free slot, older waiting
// edits are dropped), and a response older than the one a row already shows is dropped.
// Every tab has its own session_id (sessionStorage), so the server resumes its encoder state
// and adapts to what the tab typed. Keys: Tab accepts the first word, Alt+1..9 the n-th word,
// Alt+Shift+1..9 the n-th phrase; digits without Alt are text.
"use strict";

(() => {
  const SUGGEST_URL = "v1/suggest";
  const TAIL_CHARS = 2000; // the most text sent: the end of longer texts (see tail())
  const MAX_IN_FLIGHT = 2;
  // Typed right after an accepted suggestion, these take the place of its automatic space.
  const CLOSING = ".,;:!?)]}%";
  const OPENING = "([{\"'\u201c\u2018\u00ab-/";

  const $ = (id) => document.getElementById(id);
  const text = $("text");
  const statusLine = $("status");
  const errorLine = $("error");
  const field = {
    k: $("k"),
    phraseWords: $("phrase-words"),
    minProb: $("min-prob"),
    budget: $("budget"),
    showProb: $("show-prob"),
  };
  const sessionId = tabSession();
  let autoSpaceAt = -1; // where the space an accept appended ends, while it is the last edit

  function tabSession() {
    const key = "nextword.session_id";
    let id = sessionStorage.getItem(key);
    if (!id) {
      // crypto.randomUUID exists only in secure contexts (https, localhost).
      id = crypto.randomUUID
        ? crypto.randomUUID()
        : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) =>
            b.toString(16).padStart(2, "0"),
          ).join("");
      sessionStorage.setItem(key, id);
    }
    return id;
  }

  // The end of a long text, from a word boundary. The start moves in steps of half the
  // limit, so consecutive keystrokes send the same beginning and the server's session
  // keeps resuming from its state instead of encoding the text afresh at every key.
  function tail(before) {
    if (before.length <= TAIL_CHARS) return before;
    const step = TAIL_CHARS / 2;
    let start = Math.ceil((before.length - TAIL_CHARS) / step) * step;
    const boundary = before.slice(start).search(/\s\S/);
    if (boundary >= 0) start += boundary + 1;
    else if (/[\udc00-\udfff]/.test(before[start])) start += 1; // never half a surrogate pair
    return before.slice(start);
  }

  // A setting as typed: empty means the server's default (the field is left out); anything
  // else is sent as a number, unchecked, so that the server's limits and messages apply.
  function setting(input) {
    return input.value.trim() === "" ? undefined : Number(input.value);
  }

  class Row {
    constructor(element, maxWords) {
      this.element = element;
      this.maxWords = maxWords; // () -> words per suggestion; 0: the row is off
      this.sent = 0; // sequence number of the newest request
      this.applied = 0; // of the newest response shown
      this.inFlight = 0;
      this.waiting = null; // the newest edit's request, while MAX_IN_FLIGHT are outstanding
      this.asked = null; // the text of the newest request
      this.shown = null; // {context, partial, suggestions} of the response shown
      this.error = null;
      this.timing = "";
      this.element.addEventListener("mousedown", (event) => event.preventDefault()); // keep focus
      this.element.addEventListener("click", (event) => {
        const button = event.target.closest("button");
        if (button) accept(this, Number(button.dataset.index));
      });
    }

    ask(context) {
      const maxWords = this.maxWords();
      if (maxWords === 0) {
        this.clear();
        return;
      }
      const body = {
        text: tail(context),
        k: setting(field.k),
        max_words: maxWords,
        min_prob: setting(field.minProb),
        budget_ms: setting(field.budget),
        session_id: sessionId,
      };
      const query = { seq: ++this.sent, context, body };
      this.asked = context;
      this.element.classList.toggle("stale", !this.isFor(context));
      if (this.inFlight >= MAX_IN_FLIGHT) this.waiting = query;
      else this.send(query);
    }

    async send(query) {
      this.inFlight += 1;
      const started = performance.now();
      let outcome;
      try {
        const response = await fetch(SUGGEST_URL, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(query.body),
        });
        const raw = await response.text();
        outcome = response.ok ? { body: JSON.parse(raw) } : { error: apiError(response, raw) };
      } catch (error) {
        outcome = { error: `network error: ${error.message}` };
      }
      this.inFlight -= 1;
      if (query.seq > this.applied) {
        // Newer than what the row shows: responses that overtook it are dropped.
        this.applied = query.seq;
        if (outcome.error) {
          this.empty(); // what it showed was for an older text
          this.error = outcome.error;
        } else {
          this.show(query, outcome.body, performance.now() - started);
        }
      }
      const next = this.waiting;
      if (next && this.inFlight < MAX_IN_FLIGHT) {
        this.waiting = null;
        this.send(next);
      }
      render();
    }

    show(query, body, roundTrip) {
      this.error = null;
      this.shown = {
        context: query.context,
        partial: body.partial_word,
        suggestions: body.suggestions,
      };
      const exact = body.exact
        ? "exact"
        : `not exact (stopped early; <= ${percent(body.unexplored_mass)} unexplored)`;
      this.timing =
        `${body.timing_ms.total.toFixed(2)} ms on the server ` +
        `(${roundTrip.toFixed(1)} ms round trip), ${exact}`;
      this.element.dataset.for = query.context;
      this.element.classList.toggle("stale", !this.isFor(beforeCursor()));
      this.draw();
    }

    draw() {
      const suggestions = this.shown ? this.shown.suggestions : [];
      this.element.replaceChildren(...suggestions.map((s, index) => chip(s, index)));
    }

    isFor(context) {
      return this.shown !== null && this.shown.context === context;
    }

    empty() {
      this.shown = null;
      this.timing = "";
      delete this.element.dataset.for;
      this.draw();
    }

    clear() {
      this.empty();
      this.error = null;
      this.applied = this.sent; // whatever is still in flight is not wanted
      this.waiting = null;
      this.asked = null;
    }
  }

  function chip(suggestion, index) {
    const button = document.createElement("button");
    button.type = "button";
    button.tabIndex = -1;
    button.dataset.index = String(index);
    button.title = `p = ${suggestion.prob.toPrecision(3)}`;
    button.append(suggestion.text);
    if (field.showProb.checked) {
      const prob = document.createElement("span");
      prob.className = "prob";
      prob.textContent = percent(suggestion.prob);
      button.append(prob);
    }
    return button;
  }

  function percent(p) {
    const value = 100 * p;
    return value >= 10 ? `${value.toFixed(0)}%` : `${value.toPrecision(2)}%`;
  }

  // "413 text_too_long: text has ... characters; the limit is ..." from the API's error body
  // {"error": {"code", "message"}}; any other body is shown as it came.
  function apiError(response, raw) {
    let error = null;
    try {
      error = JSON.parse(raw).error;
    } catch {
      // not JSON: shown raw below
    }
    const retry = response.headers.get("retry-after");
    const after = retry ? ` (retry after ${retry} s)` : "";
    if (error && error.message) return `${response.status} ${error.code}: ${error.message}${after}`;
    return `${response.status} ${response.statusText}: ${raw.slice(0, 300)}${after}`;
  }

  const words = new Row($("words"), () => 1);
  const phrases = new Row($("phrases"), () => Number(field.phraseWords.value));
  const rows = [words, phrases];

  function render() {
    phrases.element.hidden = phrases.maxWords() === 0;
    const parts = [];
    if (words.timing) parts.push(`words: ${words.timing}`);
    if (phrases.timing) parts.push(`phrases: ${phrases.timing}`);
    statusLine.textContent = parts.join(" \u00b7 ") || "\u00a0";
    const errors = [...new Set(rows.map((row) => row.error).filter(Boolean))];
    errorLine.textContent = errors.join("\n");
    errorLine.hidden = errors.length === 0;
  }

  function beforeCursor() {
    return text.value.slice(0, text.selectionStart);
  }

  function update() {
    const context = beforeCursor();
    for (const row of rows) row.ask(context);
    render();
  }

  // Accept a suggestion: it replaces the partly typed word (the response's partial_word, and
  // whatever was typed since without a space), or follows the finished text with the right
  // spacing; one space is appended. False when the row shows nothing for the text now typed.
  function accept(row, index) {
    const shown = row.shown;
    const suggestion = shown && shown.suggestions[index];
    if (!suggestion) return false;
    const start = text.selectionStart;
    const before = text.value.slice(0, start);
    const since = before.slice(shown.context.length);
    if (!before.startsWith(shown.context) || /\s/.test(since)) return false; // out of date
    let from = shown.context.length;
    if (shown.partial && shown.context.endsWith(shown.partial)) from -= shown.partial.length;
    else if (shown.partial) from -= /[\p{L}\p{N}\p{M}']*$/u.exec(shown.context)[0].length;
    let insert = suggestion.text;
    if (!shown.partial && needsSpace(shown.context)) insert = ` ${insert}`;
    const after = text.value.slice(text.selectionEnd);
    const spaced = /^\s/.test(after);
    replace(from, text.selectionEnd, spaced ? insert : `${insert} `);
    if (spaced) text.setSelectionRange(text.selectionStart + 1, text.selectionStart + 1);
    autoSpaceAt = spaced ? -1 : text.selectionStart;
    return true;
  }

  function needsSpace(context) {
    if (context === "" || /\s$/.test(context)) return false;
    const last = context.slice(-1);
    if (last === '"' || last === "'") return !/(^|[\s([{])["']$/.test(context); // a closing quote
    return !OPENING.includes(last);
  }

  // Replace text[from, to) with `insert`, through the editing commands where the browser has
  // them, so that Ctrl+Z undoes an accepted suggestion.
  function replace(from, to, insert) {
    text.setSelectionRange(from, to);
    if (!document.execCommand("insertText", false, insert)) {
      text.setRangeText(insert, from, to, "end");
      text.dispatchEvent(new Event("input"));
    }
  }

  text.addEventListener("keydown", (event) => {
    if (event.isComposing) return;
    const digit = /^Digit([1-9])$/.exec(event.code);
    if (event.key === "Tab" && !event.shiftKey && !event.altKey && !event.ctrlKey) {
      // Tab moves the focus on only when there is nothing to accept.
      if (accept(words, 0) || words.shown?.suggestions.length) event.preventDefault();
    } else if (digit && event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      accept(event.shiftKey ? phrases : words, Number(digit[1]) - 1);
    } else if (
      event.key.length === 1 &&
      CLOSING.includes(event.key) &&
      !event.ctrlKey &&
      !event.altKey &&
      text.selectionStart === autoSpaceAt &&
      text.selectionEnd === autoSpaceAt
    ) {
      // "York" accepted, then ".": "York." as a phone keyboard writes it, not "York .".
      event.preventDefault();
      replace(autoSpaceAt - 1, autoSpaceAt, event.key);
    }
  });
  text.addEventListener("input", () => {
    autoSpaceAt = -1;
    update();
  });
  // The cursor moved without an edit (click, arrows): suggest for the text before it.
  document.addEventListener("selectionchange", () => {
    if (document.activeElement === text && words.asked !== beforeCursor()) update();
  });
  $("settings").addEventListener("input", (event) => {
    if (event.target !== field.showProb) update();
  });
  $("settings").addEventListener("submit", (event) => event.preventDefault());
  field.showProb.addEventListener("change", () => {
    for (const row of rows) row.draw();
  });

  $("tail-chars").textContent = TAIL_CHARS.toLocaleString("en");
  text.focus();
  update();
})();

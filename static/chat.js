// DistriChat browser client: plain JavaScript, no build step, no dependencies.
//
// What it does, by page (<body data-page="...">):
// - "room" and "dashboard": gets a connection token and the node list (least-loaded
//   first) from GET /api/token, holds ONE WebSocket to a node and subscribes to every
//   room listed on the page ([data-room-id]). On the room page it shows the open room's
//   messages (newest at the bottom, older ones loaded when scrolling up), typing and
//   presence; elsewhere it counts unread messages and mentions.
// - "nodes": refreshes the cluster tables from /api/cluster and /api/nodes every 2 s.
// - any page: forms with data-confirm="question" ask before they submit (admin actions);
//   the "Enable notifications" button shows while the browser has not been asked.
//
// Connection: a lost socket is retried with exponential backoff and jitter on the NEXT
// node of a freshly fetched list; each room resumes with `since` = the last seq seen, and
// messages are de-duplicated by seq. `?node=ID` in the page URL makes the first attempt go
// to node ID (tests and operators use it to pick a node). The state is shown in
// #conn-state: data-state (connecting|connected|reconnecting|signed-out), data-node (the
// node id), data-reconnects (how many times the connection was lost).
//
// Sending is optimistic: a message shows as pending until its ack, is re-sent with the
// same client_id after a reconnect (the owner de-duplicates), and is marked failed with a
// Retry button if not acknowledged within 15 s.
//
// Message events (docs/PROTOCOL.md, "Message events"): every entry of the open room
// (live, caught up, history, thread) is applied by the protocol's idempotent rules to one
// state per message, which every copy of it on the page shows (the list, the thread
// panel, the quotes of its replies). An entry about a message not loaded yet is kept and
// applied when the message loads. Each message (li#m-SEQ, focusable) has actions shown on
// hover, on keyboard focus and after a long press: Reply (opens its thread), React (the
// eight emoji the owner accepts), and for one's own messages Edit (in place: Enter saves,
// Escape cancels) and Delete (after a confirm). Reaction chips toggle one's own reaction
// (aria-pressed). A root shows "N replies", which opens the thread panel: the `thread`
// read, kept live from the room's replies, with a composer that sends `send` with
// `reply_to`. Edits, deletes and reactions go with a fresh client_id, are re-sent with it
// after a reconnect until acked, and refusals (forbidden, not_found, muted, banned) show
// in #room-error. `#m-SEQ` in the URL pages history back to that message and highlights
// it. Thread and mentions reads are queued: at most 3 unanswered (history is the 4th the
// node allows).
//
// Unread counts: the last seq read per room is kept per user on the server (so every
// device agrees) and in localStorage until it has been reported. Live events (edits,
// deletes, reactions) are not counted as unread; the first count, taken from seqs, does
// include them.
//
// Thread unread marks: the room page keeps the room's read mark as it was when the page
// loaded (`Unread.readSeq`: the rendered data-read-seq or the local mark, the higher),
// before reading the room moves it on. A reply is new if its seq is above that mark
// (replies arriving live while the panel is closed are), someone else wrote it, it is
// not deleted, and it has not been shown in an open thread panel on this page. A root's
// link counts them from its `children` ("3 replies · 2 new", aria-label "3 replies, 2
// new"). Opening the panel marks the thread's replies seen: those that were new (and
// those the `thread` read brings above the mark) carry class `new` there, after a "New"
// separator, until the panel closes; replies arriving live while it is open are seen,
// not new. After a reload the read mark covers what the page showed, so a thread with
// no reply above it shows no "new".
//
// Mentions: each listed room not open asks `mentions` after its read mark (when it has
// unread entries) and counts the answers' seqs plus live messages whose `mentions` hold
// the user or "@room" ([data-mentions-for] badges, "99+" cap); reading the room clears
// it. While the tab is hidden, a mention or a DM message ([data-dm]) from someone else
// raises a Notification (if permitted) whose click opens the room at the message.
//
// All user text goes into the page through textContent / createTextNode, never as HTML.
'use strict';

(function () {
  const SEND_TIMEOUT_MS = 15000;
  const CONNECT_TIMEOUT_MS = 5000;
  const BACKOFF_BASE_MS = 300;
  const BACKOFF_MAX_MS = 10000;
  const HISTORY_PAGE = 50;
  const TYPING_EVERY_MS = 2000;
  const TYPING_SHOW_MS = 3500;
  const MAX_SUBSCRIPTIONS = 150;
  const NODES_REFRESH_MS = 2000;
  const READ_REPORT_MS = 1000;
  const READ_RETRY_MS = 5000;
  // Times a mark the server skipped (a join it did not know of yet) is reported again.
  const READ_SKIP_RETRIES = 3;
  // Errors after which a send or a subscription is simply tried again.
  const RETRIABLE = new Set(['unavailable', 'internal', 'stale_epoch', 'rate_limited', 'not_subscribed', 'unknown_room']);
  // What a refused change or send tells the reader (docs/PROTOCOL.md, "Error codes").
  const ERROR_TEXT = {
    forbidden: 'You may not do that.',
    not_found: 'That message is gone (deleted, or never here).',
    muted: 'You are muted in this room for now.',
    banned: 'You are banned from this room.',
    text_too_long: 'That text is too long.',
    bad_frame: 'The change was refused.',
  };
  // The reactions a message may get: exactly the set the owner accepts.
  const EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢', '👀', '✅'];
  // Thread and mentions reads unanswered at once (history takes the node's fourth).
  const READS_AT_ONCE = 3;
  // How long a touch must rest on a message to show its actions.
  const LONG_PRESS_MS = 500;

  const body = document.body;
  const page = body.dataset.page;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function randomId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Date.now().toString(36) + '-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------------------------
  // The connection: token, node list, one WebSocket, reconnects.
  // ---------------------------------------------------------------------------------

  class Connection {
    constructor(stateEl, handlers) {
      this.stateEl = stateEl;
      this.handlers = handlers;
      this.nodes = [];
      this.token = null;
      this.index = 0;
      this.ws = null;
      this.nodeId = null;
      this.attempt = 0;
      this.reconnects = 0;
      this.connected = false;
      this.stopped = false;
      const preferred = new URLSearchParams(location.search).get('node');
      this.preferred = preferred && /^\d+$/.test(preferred) ? Number(preferred) : null;
    }

    async start() {
      this.show('connecting', 'Connecting…');
      await this.refresh();
      const at = this.nodes.findIndex((node) => node.id === this.preferred);
      this.index = at >= 0 ? at : 0;
      this.open();
    }

    // A fresh token and node list from the control that served the page.
    async refresh() {
      try {
        const response = await fetch('/api/token', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
        if (response.status === 401) {
          this.stopped = true;
          this.show('signed-out', 'Signed out — log in again');
          return;
        }
        if (!response.ok) throw new Error('token request answered ' + response.status);
        const view = await response.json();
        this.token = view.token;
        this.nodes = Array.isArray(view.nodes) ? view.nodes : [];
      } catch (e) {
        // Keep the old token and list; the next attempt asks again.
      }
    }

    open() {
      if (this.stopped) return;
      if (this.nodes.length === 0 || !this.token) {
        this.retry('no chat node is available');
        return;
      }
      const node = this.nodes[this.index % this.nodes.length];
      this.nodeId = node.id;
      this.show(this.reconnects ? 'reconnecting' : 'connecting',
        (this.reconnects ? 'Reconnecting to node ' : 'Connecting to node ') + node.id + '…');
      let ws;
      try {
        ws = new WebSocket(node.ws_url);
      } catch (e) {
        this.retry('cannot open a socket');
        return;
      }
      this.ws = ws;
      const giveUp = setTimeout(() => ws.close(), CONNECT_TIMEOUT_MS);
      ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', token: this.token }));
      ws.onmessage = (event) => {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch (e) {
          return;
        }
        if (frame.type === 'welcome') {
          clearTimeout(giveUp);
          this.attempt = 0;
          this.connected = true;
          this.nodeId = frame.node;
          this.show('connected', 'Connected to node ' + frame.node);
          this.handlers.connected();
        } else if (frame.type === 'error' && !this.connected && frame.code === 'unauthorized') {
          ws.close();
        } else {
          this.handlers.frame(frame);
        }
      };
      ws.onclose = () => {
        clearTimeout(giveUp);
        if (this.ws !== ws) return;
        this.ws = null;
        const wasConnected = this.connected;
        this.connected = false;
        if (wasConnected) this.handlers.disconnected();
        this.retry('connection lost');
      };
    }

    // Backoff with jitter, then the node after the one that failed, in a fresh list.
    retry(reason) {
      if (this.stopped) return;
      this.reconnects += 1;
      const failed = this.nodeId;
      const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
      const delay = ceiling / 2 + Math.random() * ceiling / 2;
      this.attempt += 1;
      this.show('reconnecting', 'Reconnecting… (' + reason + '; next try in ' + (delay / 1000).toFixed(1) + ' s)');
      setTimeout(async () => {
        await this.refresh();
        const at = this.nodes.findIndex((node) => node.id === failed);
        this.index = at >= 0 ? at + 1 : 0;
        this.open();
      }, delay);
    }

    send(frame) {
      if (!this.connected || !this.ws) return false;
      this.ws.send(JSON.stringify(frame));
      return true;
    }

    show(state, text) {
      if (!this.stateEl) return;
      this.stateEl.dataset.state = state;
      this.stateEl.dataset.node = this.connected && this.nodeId !== null ? String(this.nodeId) : '';
      this.stateEl.dataset.reconnects = String(this.reconnects);
      this.stateEl.textContent = text;
    }
  }

  // ---------------------------------------------------------------------------------
  // Unread counts (every listed room) and read positions: kept per user on the server
  // (rendered into the page as data-read-seq, reported with POST /api/read-marks at most
  // once a second) and in localStorage (for marks not reported yet). The higher wins.
  // ---------------------------------------------------------------------------------

  class Unread {
    constructor(userId) {
      this.prefix = 'districhat.read.' + userId + '.';
      this.counts = new Map();
      this.server = new Map(); // room -> seq read, as the server knows it
      for (const badge of document.querySelectorAll('[data-unread-for][data-read-seq]')) {
        this.server.set(Number(badge.dataset.unreadFor), Number(badge.dataset.readSeq) || 0);
      }
      this.outbox = new Map(); // room -> seq read, not reported yet
      this.skips = new Map(); // room -> times the server skipped its mark
      this.flushTimer = null;
      window.addEventListener('pagehide', () => this.report(true));
    }

    readSeq(room) {
      let local = 0;
      try {
        local = Number(localStorage.getItem(this.prefix + room)) || 0;
      } catch (e) {
        // Private mode without storage: the server's mark is all there is.
      }
      return Math.max(local, this.server.get(room) || 0);
    }

    markRead(room, seq) {
      if (seq > this.readSeq(room)) {
        try {
          localStorage.setItem(this.prefix + room, String(seq));
        } catch (e) {
          // No storage: the report below still reaches the server.
        }
        this.outbox.set(room, seq);
        this.scheduleReport(READ_REPORT_MS);
      }
      this.set(room, 0);
    }

    scheduleReport(delay) {
      if (this.flushTimer === null) this.flushTimer = setTimeout(() => this.report(false), delay);
    }

    // Sends the marks read since the last report; `leaving`: the page is going away.
    report(leaving) {
      clearTimeout(this.flushTimer);
      this.flushTimer = null;
      if (this.outbox.size === 0) return;
      const marks = Array.from(this.outbox, ([room, seq]) => ({ room, seq }));
      this.outbox.clear();
      const retry = () => {
        for (const mark of marks) {
          if (!(this.outbox.get(mark.room) >= mark.seq)) this.outbox.set(mark.room, mark.seq);
        }
        this.scheduleReport(READ_RETRY_MS);
      };
      fetch('/api/read-marks', {
        method: 'POST',
        credentials: 'same-origin',
        keepalive: leaving,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ marks }),
      }).then(async (response) => {
        if (response.status >= 500) return retry();
        if (!response.ok) return; // 401: logged out; 400: nothing to retry.
        const { skipped = [] } = await response.json().catch(() => ({}));
        const later = [];
        for (const mark of marks) {
          if (!skipped.includes(mark.room)) {
            this.server.set(mark.room, Math.max(mark.seq, this.server.get(mark.room) || 0));
          } else if ((this.skips.get(mark.room) || 0) < READ_SKIP_RETRIES) {
            // The member we reached may not know of a join made a moment ago: try again.
            this.skips.set(mark.room, (this.skips.get(mark.room) || 0) + 1);
            later.push(mark);
          }
        }
        if (later.length > 0) {
          for (const mark of later) {
            if (!(this.outbox.get(mark.room) >= mark.seq)) this.outbox.set(mark.room, mark.seq);
          }
          this.scheduleReport(READ_RETRY_MS);
        }
      }, retry);
    }

    set(room, count) {
      this.counts.set(room, Math.max(0, count));
      this.render();
    }

    bump(room) {
      this.set(room, (this.counts.get(room) || 0) + 1);
    }

    render() {
      let total = 0;
      for (const [room, count] of this.counts) {
        total += count;
        for (const badge of document.querySelectorAll('[data-unread-for="' + room + '"]')) {
          badge.textContent = count > 99 ? '99+' : String(count);
          badge.hidden = count === 0;
          badge.setAttribute('aria-label', count + ' unread');
        }
      }
      const base = document.title.replace(/^\(\d+\+?\) /, '');
      document.title = total > 0 ? '(' + (total > 99 ? '99+' : total) + ') ' + base : base;
    }
  }

  // ---------------------------------------------------------------------------------
  // The open room: messages and their events (edits, deletes, reactions, replies),
  // history, the thread panel, pending sends and changes, typing, presence.
  // ---------------------------------------------------------------------------------

  class RoomView {
    constructor(room, me, client) {
      this.room = room;
      this.me = me;
      this.client = client;
      this.list = document.getElementById('message-list');
      this.scroller = document.getElementById('messages');
      this.historyState = document.getElementById('history-state');
      this.typingEl = document.getElementById('typing');
      this.presenceEl = document.getElementById('presence-list');
      this.errorEl = document.getElementById('room-error');
      this.input = document.getElementById('message-input');
      this.panel = document.getElementById('thread-panel');
      this.threadList = document.getElementById('thread-list');
      this.threadState = document.getElementById('thread-state');
      this.threadInput = document.getElementById('thread-input');
      this.msgs = new Map(); // seq -> the message's current state (see `normalize`)
      this.effects = new Map(); // seq -> entries about a message not loaded yet
      this.children = new Map(); // root seq -> Set of its replies' seqs
      this.cursor = null; // seq to ask history before; null until subscribed
      this.hasMore = true;
      this.loading = false;
      this.firstPage = true;
      this.pending = new Map(); // client_id -> {clientId, text, replyTo, since, el, failed}
      this.changes = new Map(); // client_id -> {frame, since}: edits, deletes, reactions
      this.thread = null; // {root, loaded, marked} while the thread panel is open
      // Thread unread marks: the room's read position as the page loaded (the rendered
      // server mark or the local one, the higher), before this page moves it on.
      this.readMark = client.unread.readSeq(room);
      this.seenReplies = new Set(); // reply seqs shown in an open thread panel
      this.typers = new Map(); // username -> timer
      this.lastTypingSent = 0;
      this.wanted = null; // a seq to show and highlight (#m-SEQ in the URL)
      this.wire();
    }

    wire() {
      const form = document.getElementById('composer');
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        this.submit(this.input, null);
      });
      this.input.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          this.submit(this.input, null);
        }
      });
      this.input.addEventListener('input', () => {
        this.autosize(this.input);
        this.sendTyping();
      });
      document.getElementById('thread-composer').addEventListener('submit', (event) => {
        event.preventDefault();
        if (this.thread) this.submit(this.threadInput, this.thread.root);
      });
      this.threadInput.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          if (this.thread) this.submit(this.threadInput, this.thread.root);
        } else if (event.key === 'Escape') {
          this.closeThread();
        }
      });
      this.threadInput.addEventListener('input', () => {
        this.autosize(this.threadInput);
        this.sendTyping();
      });
      document.getElementById('thread-close').addEventListener('click', () => this.closeThread());
      this.panel.addEventListener('keydown', (event) => {
        if (event.key === 'Escape' && !event.defaultPrevented) this.closeThread();
      });
      this.scroller.addEventListener('scroll', () => {
        if (this.scroller.scrollTop < 80) this.loadOlder();
      });
      // A tap outside a long-pressed message hides its actions again.
      document.addEventListener('click', (event) => {
        for (const open of document.querySelectorAll('.msg.show-actions')) {
          if (!open.contains(event.target)) open.classList.remove('show-actions');
        }
      });
      const wanted = () => {
        const match = /^#m-(\d+)$/.exec(location.hash);
        this.wanted = match ? Number(match[1]) : null;
        this.reveal();
        // Not loaded yet: page back to it (history() goes on until it is there).
        if (this.wanted !== null && this.cursor !== null && this.cursor > this.wanted) this.loadOlder();
      };
      window.addEventListener('hashchange', wanted);
      wanted();
      setInterval(() => this.expirePending(), 1000);
    }

    sendTyping() {
      const now = Date.now();
      if (now - this.lastTypingSent > TYPING_EVERY_MS) {
        if (this.client.conn.send({ type: 'typing', room: this.room })) this.lastTypingSent = now;
      }
    }

    autosize(input) {
      input.style.height = 'auto';
      const wanted = input.scrollHeight + 2;
      input.style.height = Math.min(wanted, 160) + 'px';
      input.style.overflowY = wanted > 160 ? 'auto' : 'hidden';
    }

    // ----- Sending messages (and replies) ---------------------------------------------

    submit(input, replyTo) {
      const text = input.value;
      if (!text.trim()) return;
      input.value = '';
      this.autosize(input);
      const item = { clientId: randomId(), text, replyTo, since: Date.now(), el: null, failed: false };
      item.el = this.pendingElement(item);
      this.pending.set(item.clientId, item);
      this.list.appendChild(item.el);
      this.renderHistoryState();
      this.scrollToBottom();
      this.transmit(item);
    }

    transmit(item) {
      const frame = { type: 'send', room: this.room, client_id: item.clientId, text: item.text };
      if (item.replyTo !== null) frame.reply_to = item.replyTo;
      this.client.conn.send(frame);
    }

    // After a reconnect: every unacknowledged send and change again, with its client_id.
    resend() {
      for (const item of this.pending.values()) {
        if (!item.failed) this.transmit(item);
      }
      for (const change of this.changes.values()) this.client.conn.send(change.frame);
    }

    expirePending() {
      const now = Date.now();
      for (const item of this.pending.values()) {
        if (!item.failed && now - item.since > SEND_TIMEOUT_MS) this.fail(item, 'Not delivered.');
      }
      for (const [clientId, change] of this.changes) {
        if (now - change.since > SEND_TIMEOUT_MS) {
          this.changes.delete(clientId);
          this.showError('Your ' + change.frame.type + ' was not confirmed in time; try again.');
        }
      }
    }

    fail(item, why) {
      item.failed = true;
      item.el.classList.remove('pending');
      item.el.classList.add('failed');
      const status = item.el.querySelector('.status');
      status.textContent = '';
      status.appendChild(document.createTextNode(why + ' '));
      const retry = el('button', 'retry small', 'Retry');
      retry.type = 'button';
      retry.addEventListener('click', () => {
        item.failed = false;
        item.since = Date.now();
        item.el.classList.remove('failed');
        item.el.classList.add('pending');
        status.textContent = 'Sending…';
        this.transmit(item);
      });
      status.appendChild(retry);
    }

    pendingElement(item) {
      const li = el('li', 'msg mine pending');
      const meta = el('div', 'meta');
      meta.appendChild(el('span', 'sender', this.me.name));
      li.appendChild(meta);
      if (item.replyTo !== null) li.appendChild(this.quoteElement(item.replyTo));
      li.appendChild(el('p', 'text', item.text));
      li.dataset.clientId = item.clientId;
      li.appendChild(el('p', 'status', 'Sending…'));
      return li;
    }

    // ----- Changes: edit, delete, react ------------------------------------------------

    // Sends a change with a fresh client_id; it is re-sent with the same one after a
    // reconnect until an ack or an error answers it.
    change(frame) {
      const clientId = randomId();
      const change = { frame: Object.assign({ room: this.room, client_id: clientId }, frame), since: Date.now() };
      this.changes.set(clientId, change);
      this.client.conn.send(change.frame);
    }

    owns(clientId) {
      return this.pending.has(clientId) || this.changes.has(clientId);
    }

    ack(frame) {
      if (this.changes.delete(frame.client_id)) return;
      const item = this.pending.get(frame.client_id);
      if (!item) return;
      this.pending.delete(frame.client_id);
      item.el.remove();
      if (!this.msgs.has(frame.seq)) {
        const message = { room: this.room, seq: frame.seq, sender: this.me.name, sender_id: this.me.id, text: item.text, ts: item.since, client_id: frame.client_id };
        if (item.replyTo !== null) message.reply_to = item.replyTo;
        this.entry(message);
      }
    }

    sendError(frame) {
      const change = this.changes.get(frame.ref);
      if (change) {
        if (RETRIABLE.has(frame.code)) {
          setTimeout(() => {
            if (this.changes.get(frame.ref) === change) this.client.conn.send(change.frame);
          }, 1000);
        } else {
          this.changes.delete(frame.ref);
          this.showError(describeError(frame));
        }
        return;
      }
      const item = this.pending.get(frame.ref);
      if (!item || item.failed) return;
      if (RETRIABLE.has(frame.code)) {
        setTimeout(() => {
          if (this.pending.has(item.clientId) && !item.failed) this.transmit(item);
        }, 1000);
      } else {
        this.fail(item, frame.message || frame.code);
        this.showError(describeError(frame));
      }
    }

    // ----- Applying entries (docs/PROTOCOL.md, "How a client applies entries") ----------

    // Any entry of the room (live, caught up, from history or a thread), in any order the
    // protocol allows: every rule is idempotent.
    // `live`: a `message` frame as it happens (not a read's copy of the past).
    entry(frame, inMain = true, live = false) {
      const kind = frame.kind || 'message';
      if (kind === 'message' || kind === 'system') {
        this.store(frame, live);
        if (inMain) this.showInMain(frame.seq);
        return;
      }
      const target = this.msgs.get(frame.target);
      if (!target) {
        // Not loaded: kept, and applied (again, harmlessly) when the target loads.
        this.remember(frame.target, frame);
        return;
      }
      applyEvent(target, frame);
      this.paint(target.seq);
      // A deleted reply is no longer counted as new on its root.
      if (target.replyTo !== null) this.paint(target.replyTo);
    }

    remember(seq, frame) {
      if (!this.effects.has(seq)) this.effects.set(seq, []);
      const list = this.effects.get(seq);
      if (!list.some((known) => known.seq === frame.seq)) list.push(frame);
    }

    store(message, live = false) {
      const item = message.client_id ? this.pending.get(message.client_id) : null;
      if (item && message.sender_id === this.me.id) {
        this.pending.delete(message.client_id);
        item.el.remove();
      }
      const state = normalize(message);
      this.msgs.set(state.seq, state);
      const waiting = this.effects.get(state.seq);
      if (waiting) {
        this.effects.delete(state.seq);
        waiting.sort((a, b) => a.seq - b.seq);
        for (const frame of waiting) {
          if (frame.kind === 'reply') countReply(state, frame.seq);
          else applyEvent(state, frame);
        }
      }
      if (state.replyTo !== null) {
        if (!this.children.has(state.replyTo)) this.children.set(state.replyTo, new Set());
        this.children.get(state.replyTo).add(state.seq);
        if (this.thread && this.thread.root === state.replyTo) {
          // Shown in the open panel: seen. New there only if it was new before the
          // panel opened (a read's copy); a live one arrives under the reader's eyes.
          if (!live && this.isNewReply(state)) this.thread.marked.add(state.seq);
          this.seenReplies.add(state.seq);
          this.showInThread(state.seq);
        }
        const root = this.msgs.get(state.replyTo);
        if (root) {
          countReply(root, state.seq);
          this.paint(root.seq); // its count, and how many of the replies are new
        } else {
          this.remember(state.replyTo, { kind: 'reply', seq: state.seq });
        }
      }
      if (this.thread && this.thread.root === state.seq) this.showInThread(state.seq);
      this.paint(state.seq);
    }

    // Shows a stored message in the main list, once, in seq order.
    showInMain(seq) {
      if (this.mainElement(seq)) return;
      const state = this.msgs.get(seq);
      const nearBottom = this.nearBottom();
      const li = this.messageElement(state, false);
      li.id = 'm-' + seq;
      this.insert(this.list, li, seq);
      this.renderHistoryState();
      if (nearBottom || state.senderId === this.me.id) this.scrollToBottom();
    }

    showInThread(seq) {
      if (!this.threadList.querySelector('li[data-seq="' + seq + '"]')) {
        this.insert(this.threadList, this.messageElement(this.msgs.get(seq), true), seq);
      }
      this.markThreadNew();
    }

    // ----- Thread unread marks ---------------------------------------------------------

    // A reply is new to the reader if it is above the room's read mark as the page
    // loaded (live replies are), someone else wrote it, it is not deleted, and it has not
    // been shown in an open thread panel on this page.
    isNewReply(state) {
      return state.replyTo !== null && state.seq > this.readMark && state.senderId !== this.me.id
        && !state.deleted && !this.seenReplies.has(state.seq);
    }

    // How many of root `seq`'s replies are new (every reply of a loaded root is loaded:
    // history pages back without gaps from the newest entry).
    newReplies(seq) {
      let count = 0;
      for (const child of this.children.get(seq) || []) {
        const state = this.msgs.get(child);
        if (state && this.isNewReply(state)) count += 1;
      }
      return count;
    }

    // In the open panel: the replies that were new carry `new`, and a "New" separator
    // stands before the first of them.
    markThreadNew() {
      if (!this.thread) return;
      let first = null;
      for (const li of this.threadList.querySelectorAll('li.msg[data-seq]')) {
        const marked = this.thread.marked.has(Number(li.dataset.seq));
        li.classList.toggle('new', marked);
        // Said, not only shown, to screen readers.
        const said = li.querySelector('.new-mark');
        if (marked && !said && li.querySelector('.meta')) li.querySelector('.meta').appendChild(el('span', 'visually-hidden new-mark', 'new'));
        else if (!marked && said) said.remove();
        if (marked && !first) first = li;
      }
      let separator = this.threadList.querySelector('.new-separator');
      if (!first) {
        if (separator) separator.remove();
        return;
      }
      if (!separator) {
        separator = el('li', 'new-separator', 'New');
      }
      if (first.previousElementSibling !== separator) this.threadList.insertBefore(separator, first);
    }

    mainElement(seq) {
      return document.getElementById('m-' + seq);
    }

    elements(seq) {
      const all = [];
      const main = this.mainElement(seq);
      if (main) all.push(main);
      const inThread = this.threadList.querySelector('li[data-seq="' + seq + '"]');
      if (inThread) all.push(inThread);
      return all;
    }

    insert(list, li, seq) {
      const first = list.firstElementChild;
      if (first && first.dataset.seq !== undefined && Number(first.dataset.seq) > seq) {
        list.insertBefore(li, first);
        return;
      }
      let before = null;
      let node = list.lastElementChild;
      while (node && (node.dataset.seq === undefined || Number(node.dataset.seq) > seq)) {
        before = node;
        node = node.previousElementSibling;
      }
      list.insertBefore(li, before);
    }

    // ----- Rendering a message ----------------------------------------------------------

    // The element of a message; `inThread`: the copy in the thread panel (no quote, no
    // reply count). Its parts are filled by `paint`, so later changes update it in place.
    messageElement(state, inThread) {
      const li = el('li', 'msg');
      li.dataset.seq = String(state.seq);
      if (state.kind === 'system') {
        li.classList.add('system');
        li.appendChild(el('p', 'text', state.text));
        return li;
      }
      li.tabIndex = 0;
      if (state.senderId === this.me.id) li.classList.add('mine');
      const meta = el('div', 'meta');
      meta.appendChild(el('span', 'sender', state.sender));
      const time = el('time', 'ts', new Date(state.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
      time.dateTime = new Date(state.ts).toISOString();
      meta.appendChild(time);
      const edited = el('span', 'edited-mark', '(edited)');
      edited.hidden = true;
      meta.appendChild(edited);
      li.appendChild(meta);
      if (state.replyTo !== null && !inThread) li.appendChild(this.quoteElement(state.replyTo));
      li.appendChild(el('p', 'text'));
      const tombstone = el('p', 'tombstone', 'message deleted');
      tombstone.hidden = true;
      li.appendChild(tombstone);
      li.appendChild(el('div', 'reactions'));
      if (!inThread) {
        const replies = el('button', 'replies-link link-button');
        replies.type = 'button';
        replies.hidden = true;
        replies.addEventListener('click', () => this.openThread(state.seq));
        li.appendChild(replies);
      }
      li.appendChild(this.actionsElement(li, state.seq));
      this.wireTouch(li);
      li.addEventListener('keydown', (event) => {
        if (event.key === 'Escape') {
          const picker = li.querySelector('.picker:not([hidden])');
          if (picker) {
            event.preventDefault();
            picker.hidden = true;
            li.querySelector('[data-action="react"]').focus();
          }
        }
      });
      this.fill(li, state);
      return li;
    }

    quoteElement(root) {
      const quote = el('div', 'quote');
      quote.dataset.quote = String(root);
      quote.appendChild(el('span', 'quote-sender'));
      quote.appendChild(el('span', 'quote-text'));
      this.fillQuote(quote, this.msgs.get(root));
      return quote;
    }

    fillQuote(quote, parent) {
      const sender = quote.querySelector('.quote-sender');
      const text = quote.querySelector('.quote-text');
      if (!parent) {
        sender.textContent = '';
        text.textContent = 'a reply in a thread';
      } else if (parent.deleted) {
        sender.textContent = '';
        text.textContent = 'deleted message';
      } else {
        sender.textContent = parent.sender;
        text.textContent = parent.text.split('\n')[0];
      }
      quote.classList.toggle('gone', !!(parent && parent.deleted));
    }

    paintQuote(seq) {
      const quote = this.mainElement(seq) && this.mainElement(seq).querySelector('.quote');
      if (quote) this.fillQuote(quote, this.msgs.get(Number(quote.dataset.quote)));
    }

    actionsElement(li, seq) {
      const bar = el('div', 'msg-actions');
      bar.setAttribute('role', 'toolbar');
      bar.setAttribute('aria-label', 'Message actions');
      const button = (action, label, handler) => {
        const b = el('button', 'small secondary', label);
        b.type = 'button';
        b.dataset.action = action;
        b.addEventListener('click', (event) => {
          event.stopPropagation();
          handler(b);
        });
        bar.appendChild(b);
        return b;
      };
      button('reply', 'Reply', () => {
        const state = this.msgs.get(seq);
        this.openThread(state.replyTo !== null ? state.replyTo : seq);
      });
      const react = button('react', 'React', () => {
        picker.hidden = !picker.hidden;
        react.setAttribute('aria-expanded', String(!picker.hidden));
        if (!picker.hidden) picker.querySelector('button').focus();
      });
      react.setAttribute('aria-haspopup', 'true');
      react.setAttribute('aria-expanded', 'false');
      button('edit', 'Edit', () => this.startEdit(li, seq));
      button('delete', 'Delete', () => {
        if (window.confirm('Delete this message? Its text will be gone for everyone.')) {
          this.change({ type: 'delete', target: seq });
        }
      });
      const picker = el('div', 'picker');
      picker.setAttribute('role', 'group');
      picker.setAttribute('aria-label', 'Pick a reaction');
      picker.hidden = true;
      for (const emoji of EMOJI) {
        const b = el('button', 'emoji', emoji);
        b.type = 'button';
        b.dataset.emoji = emoji;
        b.setAttribute('aria-label', 'React with ' + emoji);
        b.addEventListener('click', (event) => {
          event.stopPropagation();
          picker.hidden = true;
          react.setAttribute('aria-expanded', 'false');
          this.change({ type: 'react', target: seq, emoji });
          react.focus();
        });
        picker.appendChild(b);
      }
      const wrap = el('div', 'msg-tools');
      wrap.appendChild(bar);
      wrap.appendChild(picker);
      return wrap;
    }

    // Touch: a long press shows the actions (hover and focus do it elsewhere).
    wireTouch(li) {
      let timer = null;
      const cancel = () => {
        clearTimeout(timer);
        timer = null;
      };
      li.addEventListener('touchstart', () => {
        cancel();
        timer = setTimeout(() => {
          li.classList.add('show-actions');
          li.focus({ preventScroll: true });
        }, LONG_PRESS_MS);
      }, { passive: true });
      li.addEventListener('touchend', cancel);
      li.addEventListener('touchmove', cancel, { passive: true });
      li.addEventListener('touchcancel', cancel);
      li.addEventListener('contextmenu', (event) => {
        if (timer !== null || li.classList.contains('show-actions')) event.preventDefault();
      });
    }

    // Shows a message's current state wherever it is shown, and in the replies quoting it.
    paint(seq) {
      const state = this.msgs.get(seq);
      if (!state) return;
      for (const li of this.elements(seq)) this.fill(li, state);
      for (const child of this.children.get(seq) || []) this.paintQuote(child);
    }

    fill(li, state) {
      if (state.kind === 'system') {
        li.querySelector('.text').textContent = state.text;
        return;
      }
      li.classList.toggle('deleted', state.deleted);
      li.classList.toggle('mentions-me', mentionsUser(state.mentions, this.me.name));
      li.querySelector('.edited-mark').hidden = !state.edited || state.deleted;
      li.querySelector('.text').textContent = state.text;
      li.querySelector('.text').hidden = state.deleted;
      li.querySelector('.tombstone').hidden = !state.deleted;
      const mine = state.senderId === this.me.id;
      for (const action of ['edit', 'delete']) {
        li.querySelector('[data-action="' + action + '"]').hidden = !mine || state.deleted;
      }
      for (const action of ['reply', 'react']) li.querySelector('[data-action="' + action + '"]').hidden = state.deleted;
      if (state.deleted) {
        li.querySelector('.picker').hidden = true;
        const editor = li.querySelector('.editor');
        if (editor) editor.remove();
      }
      const replies = li.querySelector('.replies-link');
      if (replies) {
        replies.hidden = state.replies === 0 || state.replyTo !== null;
        const count = state.replies === 1 ? '1 reply' : state.replies + ' replies';
        const fresh = replies.hidden ? 0 : this.newReplies(state.seq);
        replies.textContent = count;
        replies.classList.toggle('has-new', fresh > 0);
        if (fresh > 0) replies.appendChild(el('span', 'replies-new', ' · ' + fresh + ' new'));
        replies.setAttribute('aria-label', fresh > 0 ? count + ', ' + fresh + ' new' : count);
      }
      const box = li.querySelector('.reactions');
      const focused = box.contains(document.activeElement) ? document.activeElement.dataset.emoji : null;
      box.textContent = '';
      for (const [emoji, users] of state.reactions) {
        const pressed = users.has(this.me.name);
        const chip = el('button', 'chip' + (pressed ? ' on' : ''), emoji + ' ' + users.size);
        chip.type = 'button';
        chip.dataset.emoji = emoji;
        chip.setAttribute('aria-pressed', String(pressed));
        chip.setAttribute('aria-label', emoji + ' ' + users.size + (pressed ? ', including you' : ''));
        chip.title = Array.from(users).join(', ');
        chip.addEventListener('click', (event) => {
          event.stopPropagation();
          this.change({ type: 'react', target: state.seq, emoji });
        });
        box.appendChild(chip);
        if (emoji === focused) chip.focus();
      }
      box.hidden = state.reactions.size === 0;
    }

    // Inline edit in place: Enter saves, Escape cancels.
    startEdit(li, seq) {
      const state = this.msgs.get(seq);
      if (!state || state.deleted || li.querySelector('.editor')) return;
      const text = li.querySelector('.text');
      const editor = el('form', 'editor');
      const label = el('label', 'visually-hidden', 'Edit your message');
      const area = el('textarea');
      area.id = 'edit-' + seq + '-' + Math.random().toString(36).slice(2, 8);
      label.htmlFor = area.id;
      area.rows = 2;
      area.maxLength = 4000;
      area.value = state.text;
      const row = el('div', 'editor-buttons');
      const save = el('button', 'small', 'Save');
      save.type = 'submit';
      const cancel = el('button', 'small secondary', 'Cancel');
      cancel.type = 'button';
      row.appendChild(save);
      row.appendChild(cancel);
      row.appendChild(el('span', 'muted help', 'Enter saves · Escape cancels'));
      editor.appendChild(label);
      editor.appendChild(area);
      editor.appendChild(row);
      text.hidden = true;
      text.after(editor);
      const close = () => {
        editor.remove();
        const current = this.msgs.get(seq);
        text.hidden = !!(current && current.deleted);
        li.focus();
      };
      const commit = () => {
        const current = this.msgs.get(seq);
        if (area.value.trim() && current && !current.deleted && area.value !== current.text) {
          this.change({ type: 'edit', target: seq, text: area.value });
        }
        close();
      };
      editor.addEventListener('submit', (event) => {
        event.preventDefault();
        commit();
      });
      cancel.addEventListener('click', close);
      area.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          commit();
        } else if (event.key === 'Escape') {
          event.preventDefault();
          event.stopPropagation();
          close();
        }
      });
      area.focus();
      area.setSelectionRange(area.value.length, area.value.length);
    }

    // ----- The thread panel ------------------------------------------------------------

    openThread(root) {
      if (this.thread && this.thread.root === root) {
        this.threadInput.focus();
        return;
      }
      this.thread = { root, loaded: false, marked: new Set() };
      this.panel.hidden = false;
      this.panel.closest('.room-layout').classList.add('thread-open');
      this.threadList.textContent = '';
      this.threadState.textContent = 'Loading the thread…';
      // The replies new until now are marked in the panel, and seen from now on.
      for (const child of this.children.get(root) || []) {
        const state = this.msgs.get(child);
        if (state && this.isNewReply(state)) this.thread.marked.add(child);
        this.seenReplies.add(child);
      }
      if (this.msgs.has(root)) this.showInThread(root);
      for (const child of this.children.get(root) || []) this.showInThread(child);
      this.paint(root);
      this.client.read({ type: 'thread', room: this.room, root });
      this.threadInput.focus();
    }

    threadAnswer(frame) {
      if (!this.thread || frame.root !== this.thread.root) return;
      for (const message of frame.messages || []) this.entry(message, false);
      this.thread.loaded = true;
      this.threadState.textContent = '';
    }

    threadFailed(text) {
      if (this.thread) this.threadState.textContent = text;
    }

    closeThread() {
      if (!this.thread) return;
      const root = this.thread.root;
      this.thread = null;
      this.panel.hidden = true;
      this.panel.closest('.room-layout').classList.remove('thread-open');
      this.threadList.textContent = '';
      const li = this.mainElement(root);
      if (li) li.focus({ preventScroll: true });
      else this.input.focus();
    }

    // ----- History ---------------------------------------------------------------------

    subscribed(seq) {
      if (this.cursor === null) {
        this.cursor = seq + 1;
        this.hasMore = seq > 0;
        this.loadOlder();
      }
      this.showError(null);
    }

    loadOlder() {
      if (this.loading || !this.hasMore || this.cursor === null) {
        this.renderHistoryState();
        return;
      }
      if (this.client.conn.send({ type: 'history', room: this.room, before: this.cursor, limit: HISTORY_PAGE })) {
        this.loading = true;
      }
      this.renderHistoryState();
    }

    history(frame) {
      this.loading = false;
      const height = this.scroller.scrollHeight;
      const top = this.scroller.scrollTop;
      let oldest = this.cursor;
      for (const message of frame.messages) {
        oldest = Math.min(oldest, message.seq);
        this.entry(message);
      }
      this.cursor = oldest;
      this.hasMore = frame.has_more && frame.messages.length > 0;
      if (this.firstPage) {
        this.firstPage = false;
        this.scrollToBottom();
      } else {
        this.scroller.scrollTop = top + (this.scroller.scrollHeight - height);
      }
      this.renderHistoryState();
      if (this.wanted !== null) {
        // Linked to a message (#m-SEQ): page back until it is loaded.
        if (this.mainElement(this.wanted)) this.reveal();
        else if (this.hasMore && this.cursor > this.wanted) this.loadOlder();
        else this.wanted = null;
        return;
      }
      // Fill the screen: without a scroll bar there is no scrolling up.
      if (this.hasMore && this.scroller.scrollHeight <= this.scroller.clientHeight + 80) this.loadOlder();
    }

    // Scrolls to the linked message and highlights it, once it is loaded.
    reveal() {
      const li = this.wanted !== null ? this.mainElement(this.wanted) : null;
      if (!li) return;
      this.wanted = null;
      for (const old of this.list.querySelectorAll('.msg.highlight')) old.classList.remove('highlight');
      li.classList.add('highlight');
      li.scrollIntoView({ block: 'center' });
      li.focus({ preventScroll: true });
    }

    historyFailed() {
      this.loading = false;
      setTimeout(() => this.loadOlder(), 1500);
    }

    renderHistoryState() {
      const any = this.list.querySelector('li') !== null;
      if (this.cursor === null && !any) {
        this.historyState.textContent = 'Loading messages…';
      } else if (this.loading) {
        this.historyState.textContent = 'Loading older messages…';
      } else if (this.hasMore && this.cursor !== null) {
        this.historyState.textContent = 'Scroll up for older messages';
      } else if (this.cursor === null) {
        this.historyState.textContent = 'Loading messages…';
      } else {
        this.historyState.textContent = any ? 'This is the start of the conversation.' : 'No messages yet: say hello!';
      }
    }

    // ----- Typing, presence, errors -----------------------------------------------------

    typing(user) {
      if (user === this.me.name) return;
      clearTimeout(this.typers.get(user));
      this.typers.set(user, setTimeout(() => {
        this.typers.delete(user);
        this.renderTyping();
      }, TYPING_SHOW_MS));
      this.renderTyping();
    }

    renderTyping() {
      const names = Array.from(this.typers.keys()).sort();
      if (names.length === 0) this.typingEl.textContent = '';
      else if (names.length === 1) this.typingEl.textContent = names[0] + ' is typing…';
      else this.typingEl.textContent = names.join(', ') + ' are typing…';
    }

    presence(users) {
      this.presenceEl.textContent = '';
      for (const user of Array.from(new Set(users)).sort()) {
        const li = el('li', user === this.me.name ? 'me' : '', user);
        if (user === this.me.name) li.appendChild(el('span', 'muted', ' (you)'));
        this.presenceEl.appendChild(li);
      }
    }

    showError(text) {
      if (!this.errorEl) return;
      this.errorEl.hidden = !text;
      this.errorEl.textContent = text || '';
    }

    nearBottom() {
      return this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 80;
    }

    scrollToBottom() {
      this.scroller.scrollTop = this.scroller.scrollHeight;
    }
  }

  // A message's state as the page keeps it, from a `message` frame or a read.
  function normalize(message) {
    const reactions = new Map();
    for (const reaction of message.reactions || []) reactions.set(reaction.emoji, new Set(reaction.users || []));
    return {
      seq: message.seq,
      kind: message.kind || 'message',
      sender: message.sender,
      senderId: message.sender_id,
      text: message.deleted ? '' : message.text || '',
      ts: message.ts,
      replyTo: message.reply_to === undefined || message.reply_to === null ? null : message.reply_to,
      mentions: message.deleted ? [] : message.mentions || [],
      edited: !!message.edited,
      deleted: !!message.deleted,
      reactions,
      replies: message.replies || 0,
      lastReply: message.last_reply || 0,
    };
  }

  // An edit, delete or reaction applied to a message's state (idempotent).
  function applyEvent(state, frame) {
    if (frame.kind === 'edit') {
      if (!state.deleted) {
        state.text = frame.text || '';
        state.edited = true;
      }
    } else if (frame.kind === 'delete') {
      state.deleted = true;
      state.text = '';
      state.mentions = [];
      state.reactions.clear();
    } else if (frame.kind === 'reaction' && !state.deleted) {
      const users = state.reactions.get(frame.emoji) || new Set();
      if (frame.on) users.add(frame.sender);
      else users.delete(frame.sender);
      if (users.size > 0) state.reactions.set(frame.emoji, users);
      else state.reactions.delete(frame.emoji);
    }
  }

  // A reply `seq` counted once in its root's state; true when it changed.
  function countReply(root, seq) {
    if (seq <= root.lastReply) return false;
    root.replies += 1;
    root.lastReply = seq;
    return true;
  }

  function mentionsUser(mentions, name) {
    const me = (name || '').toLowerCase();
    return (mentions || []).some((m) => m === '@room' || m === me);
  }

  function describeError(frame) {
    const text = ERROR_TEXT[frame.code];
    return text ? text + ' (' + frame.code + ')' : (frame.message || 'Something went wrong') + ' (' + frame.code + ')';
  }

  // ---------------------------------------------------------------------------------
  // The client: rooms followed over the connection.
  // ---------------------------------------------------------------------------------

  class Client {
    constructor() {
      this.me = { name: body.dataset.user, id: Number(body.dataset.userId) };
      this.unread = new Unread(this.me.id);
      this.mentions = new Mentions();
      this.rooms = new Map(); // id -> {lastSeq, subscribedOnce}
      const chat = document.getElementById('chat');
      this.open = chat && chat.dataset.member === 'true' ? Number(chat.dataset.room) : null;
      const listed = Array.from(document.querySelectorAll('[data-room-id]'), (node) => Number(node.dataset.roomId));
      const ids = this.open !== null ? [this.open].concat(listed) : listed;
      for (const id of ids.slice(0, MAX_SUBSCRIPTIONS)) {
        if (!this.rooms.has(id)) this.rooms.set(id, { lastSeq: 0, subscribedOnce: false });
      }
      this.dms = new Set(Array.from(document.querySelectorAll('[data-room-id][data-dm="true"]'), (node) => Number(node.dataset.roomId)));
      if (chat && chat.dataset.dm === 'true') this.dms.add(Number(chat.dataset.room));
      this.readQueue = []; // thread and mentions reads not sent yet
      this.readsInFlight = []; // sent, not answered (the node answers 4 at a time)
      this.conn = new Connection(document.getElementById('conn-state'), {
        connected: () => this.connected(),
        disconnected: () => {
          this.readQueue = this.readsInFlight.concat(this.readQueue);
          this.readsInFlight = [];
        },
        frame: (frame) => this.frame(frame),
      });
      this.view = this.open !== null ? new RoomView(this.open, this.me, this) : null;
      document.addEventListener('visibilitychange', () => this.markOpenRead());
    }

    start() {
      if (this.rooms.size === 0 && !document.getElementById('conn-state')) return;
      this.conn.start();
    }

    connected() {
      for (const [id, room] of this.rooms) this.subscribe(id, room);
      if (this.view) {
        this.view.resend();
        if (this.view.loading) {
          this.view.loading = false;
          this.view.loadOlder();
        }
      }
      this.pumpReads();
    }

    subscribe(id, room) {
      const frame = { type: 'subscribe', room: id };
      if (room.subscribedOnce) frame.since = room.lastSeq;
      this.conn.send(frame);
    }

    // A `thread` or `mentions` read, sent when fewer than READS_AT_ONCE are unanswered
    // (history, one at a time, makes the node's limit of 4).
    read(frame) {
      this.readQueue.push(frame);
      this.pumpReads();
    }

    pumpReads() {
      while (this.readsInFlight.length < READS_AT_ONCE && this.readQueue.length > 0 && this.conn.connected) {
        const frame = this.readQueue.shift();
        if (!this.conn.send(frame)) {
          this.readQueue.unshift(frame);
          break;
        }
        this.readsInFlight.push(frame);
      }
    }

    // The answer to a read (or an error about its room): the oldest such read is done.
    readDone(type, room) {
      const at = this.readsInFlight.findIndex((f) => f.room === room && (type === null || f.type === type));
      const frame = at >= 0 ? this.readsInFlight.splice(at, 1)[0] : null;
      this.pumpReads();
      return frame;
    }

    frame(frame) {
      const room = this.rooms.get(frame.room);
      switch (frame.type) {
        case 'subscribed':
          if (!room) return;
          room.lastSeq = Math.max(room.lastSeq, frame.seq);
          if (!room.subscribedOnce) {
            room.subscribedOnce = true;
            if (frame.room !== this.open) {
              const read = this.unread.readSeq(frame.room);
              this.unread.set(frame.room, room.lastSeq - read);
              if (room.lastSeq > read) this.read({ type: 'mentions', room: frame.room, after: read });
            }
          }
          if (frame.room === this.open) {
            this.view.subscribed(frame.seq);
            this.markOpenRead();
          }
          break;
        case 'message':
          if (!room) return;
          room.lastSeq = Math.max(room.lastSeq, frame.seq);
          this.live(frame);
          break;
        case 'ack':
          if (this.view && frame.room === this.open) this.view.ack(frame);
          break;
        case 'history':
          if (this.view && frame.room === this.open) this.view.history(frame);
          break;
        case 'thread':
          this.readDone('thread', frame.room);
          if (this.view && frame.room === this.open) this.view.threadAnswer(frame);
          break;
        case 'mentions':
          this.readDone('mentions', frame.room);
          if (frame.room !== this.open) {
            const read = this.unread.readSeq(frame.room);
            this.mentions.add(frame.room, (frame.messages || []).filter((m) => m.seq > read).map((m) => m.seq), !!frame.has_more);
          }
          break;
        case 'typing':
          if (this.view && frame.room === this.open) this.view.typing(frame.user);
          break;
        case 'presence':
          if (this.view && frame.room === this.open) this.view.presence(frame.users || []);
          break;
        case 'error':
          this.error(frame);
          break;
        default:
          break;
      }
    }

    // A `message` frame: an entry of a followed room, live or caught up.
    live(frame) {
      const kind = frame.kind || 'message';
      const message = kind === 'message' || kind === 'system';
      const fromOther = frame.sender_id !== this.me.id;
      const mentioned = kind === 'message' && fromOther && mentionsUser(frame.mentions, this.me.name);
      if (frame.room === this.open) {
        this.view.entry(frame, true, true);
        this.view.reveal();
        this.markOpenRead();
      } else {
        if (message && fromOther) this.unread.bump(frame.room);
        if (mentioned) this.mentions.add(frame.room, [frame.seq], false);
        if (kind === 'delete') this.mentions.forget(frame.room, frame.target);
      }
      if (kind === 'message' && fromOther && (mentioned || this.dms.has(frame.room))) this.notify(frame);
    }

    // A system notification while the tab is hidden (text as plain text; a click
    // focuses the page and opens the room).
    notify(frame) {
      if (!('Notification' in window) || Notification.permission !== 'granted' || !document.hidden) return;
      const link = document.querySelector('[data-room-id="' + frame.room + '"] .room-name');
      const title = document.getElementById('room-title');
      const label = link ? link.textContent : frame.room === this.open && title ? title.textContent : 'room ' + frame.room;
      try {
        const note = new Notification(frame.sender + ' in ' + label, { body: frame.text, tag: 'districhat-' + frame.room + '-' + frame.seq });
        note.onclick = () => {
          window.focus();
          if (frame.room !== this.open) location.href = '/rooms/' + frame.room + '#m-' + frame.seq;
          note.close();
        };
      } catch (e) {
        // Some browsers only allow notifications from a service worker: nothing to show.
      }
    }

    error(frame) {
      const ref = frame.ref === undefined || frame.ref === null ? null : String(frame.ref);
      if (this.view && ref !== null && this.view.owns(ref)) {
        this.view.sendError(frame);
        return;
      }
      const id = ref !== null && /^\d+$/.test(ref) ? Number(ref) : null;
      const room = id !== null ? this.rooms.get(id) : null;
      if (!room) return;
      // An error about a room may answer its subscribe, its history or a thread or
      // mentions read: the frame does not say which. Each is retried (subscribing again
      // and reading twice are harmless), so none is left waiting.
      const historyLoading = this.view && id === this.open && this.view.loading;
      const read = historyLoading ? null : this.readDone(null, id);
      if (read) {
        if (RETRIABLE.has(frame.code)) {
          setTimeout(() => this.read(read), 1500);
        } else if (read.type === 'thread' && this.view && id === this.open) {
          this.view.threadFailed(describeError(frame));
          return;
        }
      }
      if (historyLoading) this.view.historyFailed();
      if (frame.code === 'forbidden' || frame.code === 'banned') {
        this.rooms.delete(id);
        if (this.view && id === this.open) this.view.showError('You may not read this room. ' + describeError(frame));
      } else if (RETRIABLE.has(frame.code)) {
        // The room is failing over: subscribe again (resuming) in a moment.
        if (this.view && id === this.open && frame.code !== 'rate_limited') {
          this.view.showError('This room is moving to another node; retrying…');
        }
        setTimeout(() => {
          if (this.rooms.has(id)) this.subscribe(id, room);
        }, 1500);
      }
    }

    markOpenRead() {
      if (this.open === null || document.visibilityState !== 'visible') return;
      const room = this.rooms.get(this.open);
      if (room) this.unread.markRead(this.open, room.lastSeq);
      this.mentions.clear(this.open);
    }
  }

  // ---------------------------------------------------------------------------------
  // Mention badges: per room, the seqs of unread messages that mention the user (from
  // the `mentions` read after the room's read mark, and live messages), so an answer and
  // a live message counting the same mention count it once.
  // ---------------------------------------------------------------------------------

  class Mentions {
    constructor() {
      this.seqs = new Map(); // room -> Set of seqs
      this.more = new Map(); // room -> the read said there are more than it returned
    }

    add(room, seqs, more) {
      if (!this.seqs.has(room)) this.seqs.set(room, new Set());
      for (const seq of seqs) this.seqs.get(room).add(seq);
      if (more) this.more.set(room, true);
      this.render(room);
    }

    forget(room, seq) {
      if (this.seqs.has(room) && this.seqs.get(room).delete(seq)) this.render(room);
    }

    clear(room) {
      if (!this.seqs.has(room) && !this.more.has(room)) return;
      this.seqs.delete(room);
      this.more.delete(room);
      this.render(room);
    }

    render(room) {
      const count = this.seqs.has(room) ? this.seqs.get(room).size : 0;
      const shown = this.more.get(room) || count > 99 ? '99+' : String(count);
      for (const badge of document.querySelectorAll('[data-mentions-for="' + room + '"]')) {
        badge.textContent = '@' + shown;
        badge.hidden = count === 0;
        badge.dataset.count = String(count);
        badge.setAttribute('aria-label', shown + (count === 1 ? ' mention' : ' mentions'));
      }
    }
  }

  // "Enable notifications", shown only while the browser has not been asked yet.
  function wireNotificationButton() {
    const button = document.getElementById('enable-notifications');
    if (!button || !('Notification' in window)) return;
    const update = () => {
      button.hidden = Notification.permission !== 'default';
    };
    button.addEventListener('click', () => {
      const asked = Notification.requestPermission(update);
      if (asked && asked.then) asked.then(update, update);
    });
    update();
  }

  // ---------------------------------------------------------------------------------
  // The nodes dashboard.
  // ---------------------------------------------------------------------------------

  function startNodes() {
    const stamp = document.getElementById('cluster-updated');
    let refreshes = 0;

    function row(cells, attrs) {
      const tr = el('tr');
      for (const [name, value] of Object.entries(attrs || {})) tr.dataset[name] = value;
      for (const cell of cells) {
        const td = el('td');
        if (cell instanceof Node) td.appendChild(cell);
        else td.textContent = cell === null || cell === undefined ? '–' : String(cell);
        tr.appendChild(td);
      }
      return tr;
    }

    function renderCluster(view) {
      document.getElementById('cluster-leader').textContent = view.leader ? 'member ' + view.leader : 'none';
      document.getElementById('cluster-term').textContent = String(view.term);
      document.getElementById('cluster-applied').textContent = String(view.applied);
      document.getElementById('cluster-answered').textContent = 'member ' + view.id;
      const tbody = document.getElementById('members-body');
      tbody.replaceChildren(...view.members.map((m) => row([
        m.id, m.addr, el('span', 'role role-' + m.role, m.role),
        m.healthy === true ? 'yes' : m.healthy === false ? 'lagging' : 'unknown', m.matched,
      ], { role: m.role })));
    }

    function renderNodes(view) {
      const tbody = document.getElementById('nodes-body');
      tbody.replaceChildren(...view.nodes.map((n) => row([
        n.id, n.name, el('span', 'status status-' + n.status, n.status), n.addr,
        n.load ? n.load.connections : null, n.load ? n.load.messages_per_sec.toFixed(1) : null,
        n.rooms_owned, n.rooms_replicated,
        n.last_seen_ms === null || n.last_seen_ms === undefined ? 'never' : (n.last_seen_ms / 1000).toFixed(1) + ' s ago',
      ], { status: n.status })));
    }

    async function getJson(url) {
      const response = await fetch(url, { headers: { Accept: 'application/json' } });
      if (!response.ok) throw new Error(url + ' answered ' + response.status);
      return response.json();
    }

    async function poll() {
      try {
        const [cluster, nodes] = await Promise.all([getJson('/api/cluster'), getJson('/api/nodes')]);
        renderCluster(cluster);
        renderNodes(nodes);
        refreshes += 1;
        stamp.dataset.refreshes = String(refreshes);
        stamp.classList.remove('stale');
        stamp.textContent = 'Updated ' + new Date().toLocaleTimeString() + ' · refreshes every 2 seconds.';
      } catch (e) {
        stamp.classList.add('stale');
        stamp.textContent = 'Could not refresh (' + e.message + '); retrying…';
      } finally {
        setTimeout(poll, NODES_REFRESH_MS);
      }
    }

    poll();
  }

  // Forms that change the cluster ask first (an inline onsubmit would break the CSP).
  for (const form of document.querySelectorAll('form[data-confirm]')) {
    form.addEventListener('submit', (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  wireNotificationButton();

  if (page === 'room' || page === 'dashboard') {
    const client = new Client();
    window.districhat = client; // for debugging in the console
    client.start();
  } else if (page === 'nodes') {
    startNodes();
  }
})();

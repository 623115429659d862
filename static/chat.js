// DistriChat browser client: plain JavaScript, no build step, no dependencies.
//
// What it does, by page (<body data-page="...">):
// - "room" and "dashboard": gets a connection token and the node list (least-loaded
//   first) from GET /api/token, holds ONE WebSocket to a node and subscribes to every
//   room listed on the page ([data-room-id]). On the room page it shows the open room's
//   messages (newest at the bottom, older ones loaded when scrolling up), typing and
//   presence; elsewhere it only counts unread messages.
// - "nodes": refreshes the cluster tables from /api/cluster and /api/nodes every 2 s.
// - any page: forms with data-confirm="question" ask before they submit (admin actions).
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
// Unread counts: the last seq read per room is kept per user on the server (so every
// device agrees) and in localStorage until it has been reported.
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
  // The open room: messages, history, pending sends, typing, presence.
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
      this.seqs = new Set();
      this.cursor = null; // seq to ask history before; null until subscribed
      this.hasMore = true;
      this.loading = false;
      this.firstPage = true;
      this.pending = new Map(); // client_id -> {clientId, text, since, el, failed}
      this.typers = new Map(); // username -> timer
      this.lastTypingSent = 0;
      this.wire();
    }

    wire() {
      const form = document.getElementById('composer');
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        this.submit();
      });
      this.input.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          this.submit();
        }
      });
      this.input.addEventListener('input', () => {
        this.autosize();
        const now = Date.now();
        if (this.input.value && now - this.lastTypingSent > TYPING_EVERY_MS) {
          if (this.client.conn.send({ type: 'typing', room: this.room })) this.lastTypingSent = now;
        }
      });
      this.scroller.addEventListener('scroll', () => {
        if (this.scroller.scrollTop < 80) this.loadOlder();
      });
      setInterval(() => this.expirePending(), 1000);
    }

    autosize() {
      this.input.style.height = 'auto';
      const wanted = this.input.scrollHeight + 2;
      this.input.style.height = Math.min(wanted, 160) + 'px';
      this.input.style.overflowY = wanted > 160 ? 'auto' : 'hidden';
    }

    submit() {
      const text = this.input.value;
      if (!text.trim()) return;
      this.input.value = '';
      this.autosize();
      const item = { clientId: randomId(), text, since: Date.now(), el: null, failed: false };
      item.el = this.pendingElement(item);
      this.pending.set(item.clientId, item);
      this.list.appendChild(item.el);
      this.scrollToBottom();
      this.transmit(item);
    }

    transmit(item) {
      this.client.conn.send({ type: 'send', room: this.room, client_id: item.clientId, text: item.text });
    }

    // After a reconnect: every unacknowledged send again, with its client_id.
    resend() {
      for (const item of this.pending.values()) {
        if (!item.failed) this.transmit(item);
      }
    }

    expirePending() {
      const now = Date.now();
      for (const item of this.pending.values()) {
        if (!item.failed && now - item.since > SEND_TIMEOUT_MS) this.fail(item, 'Not delivered.');
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
      const li = this.messageElement({ sender: this.me.name, text: item.text, ts: Date.now() }, true);
      li.classList.add('pending');
      li.dataset.clientId = item.clientId;
      li.appendChild(el('p', 'status', 'Sending…'));
      return li;
    }

    messageElement(message, mine) {
      const li = el('li', 'msg' + (mine ? ' mine' : ''));
      const meta = el('div', 'meta');
      meta.appendChild(el('span', 'sender', message.sender));
      const time = el('time', 'ts', new Date(message.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
      time.dateTime = new Date(message.ts).toISOString();
      meta.appendChild(time);
      li.appendChild(meta);
      li.appendChild(el('p', 'text', message.text));
      return li;
    }

    // A confirmed message: shown once, in seq order, above any pending ones.
    add(message) {
      const item = message.client_id ? this.pending.get(message.client_id) : null;
      if (item && message.sender_id === this.me.id) {
        this.pending.delete(message.client_id);
        item.el.remove();
      }
      if (this.seqs.has(message.seq)) return false;
      this.seqs.add(message.seq);
      const nearBottom = this.nearBottom();
      const li = this.messageElement(message, message.sender_id === this.me.id);
      li.dataset.seq = String(message.seq);
      this.insert(li, message.seq);
      if (nearBottom || message.sender_id === this.me.id) this.scrollToBottom();
      return true;
    }

    insert(li, seq) {
      const first = this.list.firstElementChild;
      if (first && first.dataset.seq !== undefined && Number(first.dataset.seq) > seq) {
        this.list.insertBefore(li, first);
        return;
      }
      let before = null;
      let node = this.list.lastElementChild;
      while (node && (node.dataset.seq === undefined || Number(node.dataset.seq) > seq)) {
        before = node;
        node = node.previousElementSibling;
      }
      this.list.insertBefore(li, before);
    }

    ack(frame) {
      const item = this.pending.get(frame.client_id);
      if (!item) return;
      this.pending.delete(frame.client_id);
      item.el.remove();
      this.add({ room: this.room, seq: frame.seq, sender: this.me.name, sender_id: this.me.id, text: item.text, ts: item.since, client_id: frame.client_id });
    }

    sendError(frame) {
      const item = this.pending.get(frame.ref);
      if (!item || item.failed) return;
      if (RETRIABLE.has(frame.code)) {
        setTimeout(() => {
          if (this.pending.has(item.clientId) && !item.failed) this.transmit(item);
        }, 1000);
      } else {
        this.fail(item, frame.message || frame.code);
      }
    }

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
        this.add(message);
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
      // Fill the screen: without a scroll bar there is no scrolling up.
      if (this.hasMore && this.scroller.scrollHeight <= this.scroller.clientHeight + 80) this.loadOlder();
    }

    historyFailed() {
      this.loading = false;
      setTimeout(() => this.loadOlder(), 1500);
    }

    renderHistoryState() {
      if (this.cursor === null) {
        this.historyState.textContent = 'Loading messages…';
      } else if (this.loading) {
        this.historyState.textContent = 'Loading older messages…';
      } else if (this.hasMore) {
        this.historyState.textContent = 'Scroll up for older messages';
      } else {
        this.historyState.textContent = this.seqs.size ? 'This is the start of the conversation.' : 'No messages yet: say hello!';
      }
    }

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

  // ---------------------------------------------------------------------------------
  // The client: rooms followed over the connection.
  // ---------------------------------------------------------------------------------

  class Client {
    constructor() {
      this.me = { name: body.dataset.user, id: Number(body.dataset.userId) };
      this.unread = new Unread(this.me.id);
      this.rooms = new Map(); // id -> {lastSeq, subscribedOnce}
      const chat = document.getElementById('chat');
      this.open = chat && chat.dataset.member === 'true' ? Number(chat.dataset.room) : null;
      const listed = Array.from(document.querySelectorAll('[data-room-id]'), (node) => Number(node.dataset.roomId));
      const ids = this.open !== null ? [this.open].concat(listed) : listed;
      for (const id of ids.slice(0, MAX_SUBSCRIPTIONS)) {
        if (!this.rooms.has(id)) this.rooms.set(id, { lastSeq: 0, subscribedOnce: false });
      }
      this.conn = new Connection(document.getElementById('conn-state'), {
        connected: () => this.connected(),
        disconnected: () => {},
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
    }

    subscribe(id, room) {
      const frame = { type: 'subscribe', room: id };
      if (room.subscribedOnce) frame.since = room.lastSeq;
      this.conn.send(frame);
    }

    frame(frame) {
      const room = this.rooms.get(frame.room);
      switch (frame.type) {
        case 'subscribed':
          if (!room) return;
          room.lastSeq = Math.max(room.lastSeq, frame.seq);
          if (!room.subscribedOnce) {
            room.subscribedOnce = true;
            if (frame.room !== this.open) this.unread.set(frame.room, room.lastSeq - this.unread.readSeq(frame.room));
          }
          if (frame.room === this.open) {
            this.view.subscribed(frame.seq);
            this.markOpenRead();
          }
          break;
        case 'message':
          if (!room) return;
          room.lastSeq = Math.max(room.lastSeq, frame.seq);
          if (frame.room === this.open) {
            this.view.add(frame);
            this.markOpenRead();
          } else if (frame.sender_id !== this.me.id) {
            this.unread.bump(frame.room);
          }
          break;
        case 'ack':
          if (this.view && frame.room === this.open) this.view.ack(frame);
          break;
        case 'history':
          if (this.view && frame.room === this.open) this.view.history(frame);
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

    error(frame) {
      const ref = frame.ref === undefined || frame.ref === null ? null : String(frame.ref);
      if (this.view && ref !== null && this.view.pending.has(ref)) {
        this.view.sendError(frame);
        return;
      }
      const id = ref !== null && /^\d+$/.test(ref) ? Number(ref) : null;
      const room = id !== null ? this.rooms.get(id) : null;
      if (!room) return;
      if (this.view && id === this.open && this.view.loading) this.view.historyFailed();
      if (frame.code === 'forbidden') {
        this.rooms.delete(id);
        if (this.view && id === this.open) this.view.showError('You may not read this room (forbidden).');
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
    }
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

  if (page === 'room' || page === 'dashboard') {
    const client = new Client();
    window.districhat = client; // for debugging in the console
    client.start();
  } else if (page === 'nodes') {
    startNodes();
  }
})();

// The engram WebSocket client for browsers (docs/protocol.md, "WebSocket").
//
// `send` resolves once the server says the observation is durable, and rejects if the
// server refused it for good. Every observation stays pending until then: after a lost
// connection the client reconnects with exponential backoff and jitter, resumes its session
// with the resume token (or starts a new one if the server restarted), and resends
// everything not yet acknowledged. The server's dedupe stores a resent observation once.

export interface Episode {
  id: string;
  /** Unix milliseconds, as Date.now() gives. */
  when: number;
  what: string;
  embedding: number[];
  confidence: number;
}

export interface Ack {
  seq: number;
  lsn: number;
}

export interface Backoff {
  initialMs: number;
  maxMs: number;
  /** Failed attempts in a row before the client gives up. */
  attemptsMax: number;
}

export interface ClientOptions {
  /** ws://HOST:PORT/v1/stream */
  url: string;
  space: string;
  /** Unacknowledged observations held at most; `send` waits for room past it. */
  bufferSize?: number;
  backoff?: Partial<Backoff>;
  clientName?: string;
  /**
   * How observations travel: "binary" (the default) as engram/1 Observe frames in binary
   * messages, about three times the rate of "json", which is for debugging by eye.
   */
  encoding?: "binary" | "json";
  /** The token of a server with an auth file (sent in init). */
  token?: string;
}

export interface RecallQuery {
  k: number;
  embedding?: number[];
  queryId?: string;
  space?: string;
  ef?: number;
  consistency?: "read_your_writes" | "eventual" | "as_of";
  asOfLsn?: number;
}

export interface RecallHit {
  id: string;
  score: number;
  what: string;
  when: number;
  confidence: number;
  lsn: number;
}

export interface RecallResult {
  status: string;
  message: string;
  asOfLsn: number;
  hits: RecallHit[];
}

/** An observation the server refused for good, with what was wrong. */
export class Refused extends Error {
  constructor(
    readonly code: string,
    readonly field: string | undefined,
    readonly expected: string | undefined,
    readonly got: string | undefined,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

/** The client gave up reconnecting, or the session cannot go on. */
export class StreamFailed extends Error {}

interface Pending {
  seq: number;
  episode: Episode;
  /** Sent on the current connection. */
  sent: boolean;
  resolve: (ack: Ack) => void;
  reject: (e: Error) => void;
}

interface RecallWaiter {
  hits: RecallHit[];
  resolve: (r: RecallResult) => void;
  reject: (e: Error) => void;
}

type Listener = (message: Record<string, unknown>) => void;

const DEFAULT_BACKOFF: Backoff = { initialMs: 50, maxMs: 5000, attemptsMax: 60 };
const DEFAULT_BUFFER_SIZE = 4096;

export class EngramStream {
  private socket: WebSocket | null = null;
  private token: string | null = null;
  private nextSeq = 1;
  /** Sent or to be resent, oldest first, until acknowledged or refused. */
  private pending: Pending[] = [];
  private recalls = new Map<number, RecallWaiter>();
  private nextRequestId = 1;
  private serverPaused = false;
  private clientPaused = false;
  private room: Array<() => void> = [];
  private heartbeatMs = 30_000;
  private watchdog: ReturnType<typeof setTimeout> | null = null;
  private reconnecting: Promise<void> | null = null;
  private closing = false;
  private failed: Error | null = null;
  private readonly backoff: Backoff;
  private readonly bufferSize: number;
  private listeners: Listener[] = [];
  /** Connections made, the first included. */
  connects = 0;
  /** The highest seq the server acknowledged in this session. */
  ackedSeq = 0;

  private constructor(private readonly options: ClientOptions) {
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.bufferSize = options.bufferSize ?? DEFAULT_BUFFER_SIZE;
  }

  static async connect(options: ClientOptions): Promise<EngramStream> {
    const stream = new EngramStream(options);
    await stream.reconnect();
    return stream;
  }

  /** Every message the server sends, as it arrives (for logs and tests). */
  onMessage(listener: Listener): void {
    this.listeners.push(listener);
  }

  /** Resolves once fewer than `bufferSize` observations are unacknowledged. */
  async ready(): Promise<void> {
    while (this.pending.length >= this.bufferSize) {
      await new Promise<void>((wake) => this.room.push(wake));
      this.check();
    }
  }

  /**
   * Streams one observation; resolves once it is durable. Past `bufferSize` unacknowledged
   * it first waits for room: `await stream.ready()` before each send keeps a loop in step.
   */
  async send(episode: Episode): Promise<Ack> {
    await this.ready();
    this.check();
    return new Promise<Ack>((resolve, reject) => {
      const entry: Pending = { seq: this.nextSeq++, episode, sent: false, resolve, reject };
      this.pending.push(entry);
      this.transmit(entry);
    });
  }

  /** Resolves once everything sent so far is acknowledged or refused. */
  async flush(): Promise<void> {
    const last = this.pending[this.pending.length - 1];
    if (!last) return;
    await new Promise<void>((done) => {
      const settle = () => done();
      last.resolve = ((resolve) => (ack: Ack) => {
        resolve(ack);
        settle();
      })(last.resolve);
      last.reject = ((reject) => (e: Error) => {
        reject(e);
        settle();
      })(last.reject);
    });
  }

  /** Asks the server to hold its messages (acks included) until `resume`. */
  pause(): void {
    this.clientPaused = true;
    this.write({ type: "flow_control", action: "pause" });
  }

  resume(): void {
    this.clientPaused = false;
    this.write({ type: "flow_control", action: "resume" });
  }

  /** The k stored observations nearest to the query, best first. */
  async recall(query: RecallQuery): Promise<RecallResult> {
    this.check();
    const requestId = this.nextRequestId++;
    const message: Record<string, unknown> = { type: "recall", request_id: requestId, k: query.k };
    if (query.embedding) message.embedding = query.embedding;
    if (query.queryId) message.query_id = query.queryId;
    if (query.space) message.space = query.space;
    if (query.ef) message.ef = query.ef;
    if (query.consistency) message.consistency = query.consistency;
    if (query.asOfLsn !== undefined) message.as_of_lsn = query.asOfLsn;
    return new Promise<RecallResult>((resolve, reject) => {
      this.recalls.set(requestId, { hits: [], resolve, reject });
      if (!this.write(message)) {
        this.recalls.delete(requestId);
        reject(new StreamFailed("not connected; retry the recall once reconnected"));
      }
    });
  }

  /** Waits for every pending observation, says close and waits for the server's. */
  async close(): Promise<void> {
    await this.flush();
    this.closing = true;
    const socket = this.socket;
    if (!socket) return;
    await new Promise<void>((done) => {
      socket.addEventListener("close", () => done(), { once: true });
      this.write({ type: "close", last_seq: this.nextSeq - 1 });
    });
    this.stopWatchdog();
  }

  /** Drops the connection at once, as a network failure would; the client resumes. */
  dropConnection(): void {
    this.socket?.close(4000, "dropped by the client");
  }

  private check(): void {
    if (this.failed) throw this.failed;
  }

  private write(message: Record<string, unknown>): boolean {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  private transmit(entry: Pending): void {
    // While the server asks for a pause, entries wait in `pending` and go out on resume.
    if (this.serverPaused || entry.sent) return;
    const frame = this.options.encoding === "json" ? null : observeFrame(entry.seq, this.options.space, entry.episode);
    if (frame && this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(frame);
      entry.sent = true;
      return;
    }
    entry.sent = this.write({ type: "observation", seq: entry.seq, episode: entry.episode });
  }

  private reconnect(): Promise<void> {
    if (!this.reconnecting) {
      this.reconnecting = this.connectWithBackoff().finally(() => {
        this.reconnecting = null;
      });
    }
    return this.reconnecting;
  }

  private async connectWithBackoff(): Promise<void> {
    for (let failures = 0; ; ) {
      try {
        await this.open();
        return;
      } catch (e) {
        if (e instanceof StreamFailed) throw this.fail(e);
        failures += 1;
        if (failures >= this.backoff.attemptsMax) {
          throw this.fail(new StreamFailed(`gave up after ${failures} attempts: ${String(e)}`));
        }
        const base = Math.min(this.backoff.initialMs * 2 ** Math.min(failures - 1, 16), this.backoff.maxMs);
        await new Promise((wake) => setTimeout(wake, base * (1 + Math.random() * 0.5)));
      }
    }
  }

  private fail(e: Error): Error {
    this.failed = e;
    for (const entry of this.pending.splice(0)) entry.reject(e);
    for (const waiter of this.recalls.values()) waiter.reject(e);
    this.recalls.clear();
    this.wakeRoom();
    return e;
  }

  /** One connection attempt: init, init_ack, resend what is pending. */
  private open(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const socket = new WebSocket(this.options.url);
      let initialised = false;
      socket.addEventListener("open", () => {
        const init: Record<string, unknown> = {
          type: "init",
          space: this.options.space,
          buffer_size: this.bufferSize,
          client_name: this.options.clientName ?? "engram-typescript",
        };
        if (this.token) init.resume_token = this.token;
        if (this.options.token) init.token = this.options.token;
        socket.send(JSON.stringify(init));
      });
      socket.addEventListener("message", (event) => {
        const message = JSON.parse(String(event.data)) as Record<string, unknown>;
        if (!initialised) {
          if (message.type === "init_ack") {
            initialised = true;
            this.socket = socket;
            this.connects += 1;
            this.started(message);
            resolve();
          } else if (message.type === "error" && message.code === "unknown_resume_token") {
            // The server restarted: start over; dedupe keeps the resends exactly-once.
            this.token = null;
            this.ackedSeq = 0;
            reject(new Error("the server no longer knows the session"));
          } else if (message.type === "error" && message.fatal) {
            reject(new Error(`${String(message.code)}: ${String(message.message)}`));
          }
          return;
        }
        this.handle(message);
      });
      socket.addEventListener("close", () => {
        if (!initialised) {
          reject(new Error("the connection closed before init_ack"));
          return;
        }
        if (this.socket === socket) this.lost();
      });
      socket.addEventListener("error", () => {
        // A close event follows and decides.
      });
    });
  }

  private started(ack: Record<string, unknown>): void {
    this.token = String(ack.resume_token);
    this.heartbeatMs = Number(ack.heartbeat_ms);
    const acked = Number(ack.last_acked_seq);
    this.settle(acked);
    this.serverPaused = false;
    if (this.clientPaused) this.write({ type: "flow_control", action: "pause" });
    // Seqs go on from the highest ever used, so a new session's acks cannot settle an
    // entry before it is sent again.
    for (const entry of this.pending) {
      entry.sent = false;
      this.transmit(entry);
    }
    this.armWatchdog();
  }

  /** The connection is gone: whatever is pending goes out again after the reconnect. */
  private lost(): void {
    this.socket = null;
    this.stopWatchdog();
    for (const waiter of this.recalls.values()) {
      waiter.reject(new StreamFailed("the connection was lost before the recall's answer"));
    }
    this.recalls.clear();
    if (this.closing || this.failed) return;
    this.reconnect().catch(() => {
      // fail() has rejected everything pending with the reason.
    });
  }

  private handle(message: Record<string, unknown>): void {
    this.armWatchdog();
    for (const listener of this.listeners) listener(message);
    switch (message.type) {
      case "ack":
        this.settle(Number(message.seq), Number(message.lsn));
        break;
      case "error":
        this.error(message);
        break;
      case "flow_control": {
        const paused = message.action === "pause";
        this.serverPaused = paused;
        if (!paused) for (const entry of this.pending) this.transmit(entry);
        break;
      }
      case "recall_result": {
        const waiter = this.recalls.get(Number(message.request_id));
        if (!waiter) break;
        waiter.hits.push(...(message.hits as RecallHit[]));
        if (!message.more) {
          this.recalls.delete(Number(message.request_id));
          waiter.resolve({
            status: String(message.status),
            message: String(message.message),
            asOfLsn: Number(message.as_of_lsn),
            hits: waiter.hits,
          });
        }
        break;
      }
      case "close":
        this.stopWatchdog();
        break;
    }
  }

  private error(message: Record<string, unknown>): void {
    if (message.fatal) {
      // The server ends the session (shutting down, a failed log): resume elsewhere.
      return;
    }
    if (message.seq === undefined) return;
    const seq = Number(message.seq);
    const index = this.pending.findIndex((entry) => entry.seq === seq);
    if (index < 0) return;
    const entry = this.pending[index];
    if (message.retryable) {
      // Overloaded or a full disk: the same observation goes again, under a new seq, once
      // the server's retry hint has passed.
      this.pending.splice(index, 1);
      const again: Pending = { ...entry, seq: this.nextSeq++, sent: false };
      this.pending.push(again);
      setTimeout(() => this.transmit(again), Number(message.retry_after_ms ?? 50));
      return;
    }
    this.pending.splice(index, 1);
    entry.reject(
      new Refused(
        String(message.code),
        message.field as string | undefined,
        message.expected as string | undefined,
        message.got as string | undefined,
        String(message.message),
      ),
    );
    this.wakeRoom();
  }

  /** Resolves every pending observation up to `seq`. */
  private settle(seq: number, lsn = 0): void {
    this.ackedSeq = Math.max(this.ackedSeq, seq);
    while (this.pending.length > 0 && this.pending[0].seq <= seq) {
      const entry = this.pending.shift()!;
      entry.resolve({ seq: entry.seq, lsn });
    }
    this.wakeRoom();
  }

  private wakeRoom(): void {
    for (const wake of this.room.splice(0)) wake();
  }

  /** Two heartbeat intervals without a word: the connection is taken as lost. */
  private armWatchdog(): void {
    this.stopWatchdog();
    this.watchdog = setTimeout(() => this.dropConnection(), 2 * this.heartbeatMs);
  }

  private stopWatchdog(): void {
    if (this.watchdog) clearTimeout(this.watchdog);
    this.watchdog = null;
  }
}

const OBSERVE = 0x02;
const encoder = new TextEncoder();

/**
 * The engram/1 Observe frame for an episode (docs/protocol.md, "Frames"): little-endian
 * `length:u32 | type:u8 | seq:u64 | space:str8 | id:str16 | when_unix_ns:i64 |
 * confidence:f32 | what:str32 | dim:u32 | embedding:[f32]`. Null if a string is too
 * long for its length field: the JSON form then goes, and the server says what is wrong.
 */
export function observeFrame(seq: number, space: string, episode: Episode): ArrayBuffer | null {
  const spaceBytes = encoder.encode(space);
  const id = encoder.encode(episode.id);
  const what = encoder.encode(episode.what);
  if (spaceBytes.length > 0xff || id.length > 0xffff) return null;
  const dim = episode.embedding.length;
  const length = 1 + 8 + 1 + spaceBytes.length + 2 + id.length + 8 + 4 + 4 + what.length + 4 + 4 * dim;
  const buffer = new ArrayBuffer(4 + length);
  const view = new DataView(buffer);
  const bytes = new Uint8Array(buffer);
  let at = 0;
  view.setUint32(at, length, true);
  view.setUint8(at + 4, OBSERVE);
  view.setBigUint64(at + 5, BigInt(seq), true);
  at += 13;
  view.setUint8(at, spaceBytes.length);
  bytes.set(spaceBytes, at + 1);
  at += 1 + spaceBytes.length;
  view.setUint16(at, id.length, true);
  bytes.set(id, at + 2);
  at += 2 + id.length;
  // Whole milliseconds convert exactly; only the fraction is rounded.
  const wholeMs = Math.floor(episode.when);
  const ns = BigInt(wholeMs) * 1_000_000n + BigInt(Math.round((episode.when - wholeMs) * 1e6));
  view.setBigInt64(at, ns, true);
  view.setFloat32(at + 8, episode.confidence, true);
  at += 12;
  view.setUint32(at, what.length, true);
  bytes.set(what, at + 4);
  at += 4 + what.length;
  view.setUint32(at, dim, true);
  at += 4;
  for (let i = 0; i < dim; i++) view.setFloat32(at + 4 * i, episode.embedding[i], true);
  return buffer;
}

// The hand-written layer of @parley/client: typed service clients with the
// access token attached and refreshed, a resumable live event stream, and
// uploads with progress.

import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

import { AccountService } from "./gen/parley/v1/account_pb.js";
import { AuthService, type Tokens } from "./gen/parley/v1/auth_pb.js";
import { AvatarService } from "./gen/parley/v1/avatar_pb.js";
import { ChatService } from "./gen/parley/v1/chat_pb.js";
import { ExportService } from "./gen/parley/v1/export_pb.js";
import { LiveService, type Event } from "./gen/parley/v1/live_pb.js";
import { MediaSchema, MediaService, MediaState, type Media } from "./gen/parley/v1/media_pb.js";
import { MessageService } from "./gen/parley/v1/message_pb.js";
import { PrivacyService } from "./gen/parley/v1/privacy_pb.js";
import { PushService } from "./gen/parley/v1/push_pb.js";
import { ServerService } from "./gen/parley/v1/server_pb.js";
import { UserService } from "./gen/parley/v1/user_pb.js";
import { memoryTokenStore, type TokenStore } from "./tokens.js";

export interface ParleyClientOptions {
  /** The server's base URL, such as "https://chat.example.com". */
  baseUrl: string;
  /** "connect" (the default) or "grpc-web". */
  protocol?: "connect" | "grpc-web";
  /** Where the session's tokens live; in memory when omitted. */
  tokenStore?: TokenStore;
  /** Refresh the access token this long before it expires (default 30 s). */
  refreshMarginMs?: number;
  /** The fetch to use; globalThis.fetch when omitted. */
  fetch?: typeof globalThis.fetch;
  /** Called after each refresh of the tokens (for logging or tests). */
  onRefresh?: (tokens: Tokens) => void;
}

/** The procedures that are called without an access token. */
const publicMethods = new Set([
  "parley.v1.AuthService/Register",
  "parley.v1.AuthService/Login",
  "parley.v1.AuthService/Refresh",
  "parley.v1.ServerService/GetServerInfo",
  // The mailed code or token is their proof.
  "parley.v1.AccountService/RequestPasswordReset",
  "parley.v1.AccountService/ResetPassword",
  "parley.v1.AccountService/VerifyEmail",
  // Browsers need it to subscribe.
  "parley.v1.PushService/GetVapidPublicKey",
]);

/** A live stream item: an event, or the instruction to re-sync. */
export type LiveItem =
  | { kind: "event"; event: Event }
  /**
   * The server no longer holds the events since the last cursor (the
   * client was away too long). Reload what is on screen (ListChats,
   * ListMessages); the stream goes on from now.
   */
  | { kind: "resync" };

export interface SubscribeOptions {
  /** Resume after this cursor (from a previous stream); from now when omitted. */
  cursor?: string;
  /** Stops the stream. */
  signal?: AbortSignal;
  /** Pass heartbeats through too (default: dropped). */
  heartbeats?: boolean;
  /** Called when the connection drops, before waiting retryInMs to reconnect. */
  onDisconnect?: (err: unknown, retryInMs: number) => void;
  /** Longest wait between reconnects (default 30 s). */
  maxBackoffMs?: number;
}

export interface UploadOptions {
  /** The chat the file is for; omit with avatar. */
  chatId?: string;
  /** Upload an avatar image instead of a chat file. */
  avatar?: boolean;
  /** The file name; File.name, or "file", when omitted. */
  fileName?: string;
  /** The MIME type; Blob.type, or application/octet-stream, when omitted. */
  contentType?: string;
  /** Called as bytes go out: sent so far, and in all. */
  onProgress?: (sent: number, total: number) => void;
  signal?: AbortSignal;
  /**
   * Makes the upload safe to retry: an id of the caller's choosing (a
   * UUID, say), new for each file, never reused for another. Calling
   * upload again with the same id and file, after a failure, continues
   * the upload the first call created (within its upload window, 15
   * minutes by default) instead of starting a second: the file is sent
   * again only if it had not arrived (Code.Aborted while another call is
   * still sending it).
   */
  clientUploadId?: string;
}

/** ParleyClient is what createParleyClient returns. */
export interface ParleyClient {
  readonly auth: Client<typeof AuthService>;
  /** Password change and reset, email verification and change. */
  readonly account: Client<typeof AccountService>;
  readonly users: Client<typeof UserService>;
  readonly avatars: Client<typeof AvatarService>;
  readonly chats: Client<typeof ChatService>;
  readonly messages: Client<typeof MessageService>;
  readonly media: Client<typeof MediaService>;
  readonly live: Client<typeof LiveService>;
  /** Blocks and privacy settings. */
  readonly privacy: Client<typeof PrivacyService>;
  /** Data exports: a zip of the account's profile, chats, messages and files. */
  readonly exports: Client<typeof ExportService>;
  /** Web Push subscriptions and settings. */
  readonly push: Client<typeof PushService>;
  readonly server: Client<typeof ServerService>;
  readonly tokenStore: TokenStore;
  /** Creates an account and signs in to it. */
  register(username: string, email: string, password: string): Promise<Tokens>;
  /** Signs in with a username or email. */
  login(login: string, password: string): Promise<Tokens>;
  /** Ends the session on the server and forgets the tokens. */
  logout(): Promise<void>;
  /**
   * The access token, refreshed first when it is about to expire. All
   * callers share one refresh in flight.
   */
  accessToken(): Promise<string>;
  /**
   * The caller's live events as an async iterator. It reconnects with
   * backoff (at least the delay a refusal asks for) and resumes from the
   * last cursor, so no event is lost across disconnects; when resuming is
   * impossible (the cursor expired, or is none the server reads) it
   * yields { kind: "resync" }. It throws a ConnectError when trying again
   * cannot help: UNAUTHENTICATED once signed out (or in again, maybe as
   * someone else: a subscription belongs to one sign-in), UNIMPLEMENTED for a
   * server that does not serve the stream (a wrong base URL), and
   * INVALID_ARGUMENT, PERMISSION_DENIED or NOT_FOUND. To resume in a later
   * stream, keep the cursor of the last event handled.
   */
  subscribe(options?: SubscribeOptions): AsyncIterable<LiveItem>;
  /** Uploads a file (CreateUpload, then the PUT) and returns the ready media. */
  upload(file: Blob, options: UploadOptions): Promise<Media>;
  /** Fetches a file (Media.url or a signed URL) as a Blob. */
  download(url: string, init?: { signal?: AbortSignal }): Promise<Blob>;
  /** An absolute URL for a path the server returned (such as Media.url). */
  url(path: string): string;
}

/** createParleyClient returns typed clients of every Parley service. */
export function createParleyClient(options: ParleyClientOptions): ParleyClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const store = options.tokenStore ?? memoryTokenStore();
  const margin = options.refreshMarginMs ?? 30_000;
  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  const makeTransport = (interceptors: Interceptor[]): Transport => {
    const o = { baseUrl, interceptors, fetch: doFetch };
    return options.protocol === "grpc-web" ? createGrpcWebTransport(o) : createConnectTransport(o);
  };

  // Refresh goes through a transport of its own, without the interceptor.
  const bare = createClient(AuthService, makeTransport([]));
  let refreshing: Promise<Tokens> | undefined;
  // Signing in or out starts a new generation: a refresh begun in an
  // older one must not write its tokens back, and the live streams of the
  // older one end (sessionEnds).
  let generation = 0;
  // The server's clock less this device's, when they disagree by more
  // than a few seconds, learnt from the issue time of the access tokens
  // it sends: their expiry is in the server's time, and a device whose
  // clock is ahead would otherwise refresh before every call.
  let skewMs = 0;
  /** learnSkew learns it from tokens asked for at t0 (this device's time). */
  const learnSkew = (t: Tokens, t0: number) => {
    const iat = claim(t.accessToken, "iat");
    const rtt = Date.now() - t0;
    // Only from a quick answer (not one a frozen tab took minutes to
    // handle), at the middle of its round trip.
    if (typeof iat !== "number" || rtt > skewToleranceMs) return;
    const d = iat * 1000 - (t0 + rtt / 2);
    skewMs = Math.abs(d) > skewToleranceMs ? d : 0;
  };
  const sessionEnds = new Set<() => void>();
  const newGeneration = () => {
    generation++;
    for (const end of sessionEnds) end();
  };
  const refreshOnce = async (used: string | undefined): Promise<Tokens> => {
    const gen = generation;
    const current = await store.get();
    if (!current?.refreshToken) {
      throw new ConnectError("not signed in", Code.Unauthenticated);
    }
    if (used !== undefined && current.accessToken !== used) {
      return current; // another tab (sharing the store) refreshed already
    }
    try {
      const t0 = Date.now();
      const res = await bare.refresh({ refreshToken: current.refreshToken }, { timeoutMs: 15_000 });
      if (!res.tokens) throw new ConnectError("no tokens in the answer", Code.Internal);
      if (gen !== generation) throw new ConnectError("signed out meanwhile", Code.Unauthenticated);
      learnSkew(res.tokens, t0);
      await store.set(res.tokens);
      options.onRefresh?.(res.tokens);
      return res.tokens;
    } catch (err) {
      if (ConnectError.from(err).code === Code.Unauthenticated && gen === generation) {
        await store.set(undefined); // the session is over
      }
      throw err;
    }
  };
  const refresh = (): Promise<Tokens> => {
    refreshing ??= (async () => {
      const used = (await store.get())?.accessToken;
      // Refresh tokens work once: tabs sharing a store take turns, and
      // a tab that finds the tokens already changed uses them.
      const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
      if (locks) return await locks.request("parley.refresh", () => refreshOnce(used));
      return await refreshOnce(undefined);
    })().finally(() => {
      refreshing = undefined;
    });
    return refreshing;
  };
  const accessToken = async (): Promise<string> => {
    if (refreshing) return (await refreshing).accessToken;
    const t = await store.get();
    if (!t?.accessToken) throw new ConnectError("not signed in", Code.Unauthenticated);
    const exp = t.accessTokenExpiresAt ? timestampDate(t.accessTokenExpiresAt).getTime() : Infinity;
    if (exp - margin <= Date.now() + skewMs) return (await refresh()).accessToken;
    return t.accessToken;
  };

  const auth: Interceptor = (next) => async (req) => {
    if (publicMethods.has(`${req.service.typeName}/${req.method.name}`)) return next(req);
    const used = await accessToken();
    req.header.set("Authorization", `Bearer ${used}`);
    try {
      return await next(req);
    } catch (err) {
      // A unary call refused for its token (revoked, or the clocks
      // disagree) is retried once with a fresh one. Streams are retried
      // by their consumers (subscribe does).
      if (req.stream || ConnectError.from(err).code !== Code.Unauthenticated) throw err;
      const t = await store.get();
      const fresh = t && t.accessToken !== used ? t.accessToken : (await refresh()).accessToken;
      req.header.set("Authorization", `Bearer ${fresh}`);
      return await next(req);
    }
  };
  const transport = makeTransport([auth]);
  // withToken runs an HTTP call outside Connect (an upload's PUT, a
  // download) as the interceptor runs a unary call: refused for its token
  // (401, before the server read a byte of the body), it runs once more
  // with a fresh one.
  const withToken = async <T>(call: (token: string) => Promise<T>): Promise<T> => {
    const used = await accessToken();
    try {
      return await call(used);
    } catch (err) {
      if (ConnectError.from(err).code !== Code.Unauthenticated) throw err;
      const t = await store.get();
      return await call(t && t.accessToken !== used ? t.accessToken : (await refresh()).accessToken);
    }
  };

  const client = {
    auth: createClient(AuthService, transport),
    account: createClient(AccountService, transport),
    users: createClient(UserService, transport),
    avatars: createClient(AvatarService, transport),
    chats: createClient(ChatService, transport),
    messages: createClient(MessageService, transport),
    media: createClient(MediaService, transport),
    live: createClient(LiveService, transport),
    privacy: createClient(PrivacyService, transport),
    exports: createClient(ExportService, transport),
    push: createClient(PushService, transport),
    server: createClient(ServerService, transport),
    tokenStore: store,
    accessToken,
    url: (path: string) => new URL(path, baseUrl + "/").toString(),
  } as ParleyClient;

  const signedIn = async (tokens: Tokens | undefined, t0: number): Promise<Tokens> => {
    if (!tokens) throw new ConnectError("no tokens in the answer", Code.Internal);
    newGeneration();
    learnSkew(tokens, t0);
    await store.set(tokens);
    return tokens;
  };
  Object.assign(client, {
    async register(username: string, email: string, password: string) {
      const t0 = Date.now();
      return signedIn((await client.auth.register({ username, email, password })).tokens, t0);
    },
    async login(login: string, password: string) {
      const t0 = Date.now();
      return signedIn((await client.auth.login({ login, password })).tokens, t0);
    },
    async logout() {
      try {
        await client.auth.logout({});
      } finally {
        newGeneration();
        await store.set(undefined);
      }
    },
    subscribe: (o: SubscribeOptions = {}) =>
      subscribe(client, refresh, {
        generation: () => generation,
        ends: sessionEnds,
        subject: async () => claim((await store.get())?.accessToken, "sub"),
      }, o),
    upload: (file: Blob, o: UploadOptions) => upload(client, doFetch, withToken, file, o),
    async download(url: string, init?: { signal?: AbortSignal }) {
      const get = async (headers: Record<string, string>) => {
        const res = await doFetch(client.url(url), { headers, signal: init?.signal });
        if (!res.ok) throw await httpError(res);
        return await res.blob();
      };
      // A signed URL carries its own authority, and the access token goes
      // to this server only.
      const target = new URL(client.url(url));
      if (url.includes("signature=") || target.origin !== new URL(client.url("")).origin) return await get({});
      return await withToken((token) => get({ Authorization: `Bearer ${token}` }));
    },
  });
  return client;
}

/** Clocks this far apart count as the same (a token's iat is in seconds). */
const skewToleranceMs = 5_000;

/** claim returns a claim of a JWT's payload, if it reads one. */
function claim(jwt: string | undefined, name: string): unknown {
  try {
    const part = jwt?.split(".")[1] ?? "";
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    return (JSON.parse(atob(b64)) as Record<string, unknown>)[name];
  } catch {
    return undefined;
  }
}

/** How long a stream may stay silent (heartbeats come every 15 s). */
const silenceMs = 45_000;

/** A stream up this long has recovered: backoff starts again from zero. */
const stableMs = 10_000;

/** The codes on which subscribe stops trying and throws. */
const permanent = new Set([
  Code.InvalidArgument,
  Code.PermissionDenied,
  Code.NotFound,
  Code.Unimplemented,
]);

/** What subscribe knows of the sign-ins of its client. */
interface Session {
  /** The current sign-in's number: each sign-in and sign-out makes a new one. */
  generation(): number;
  /** Called at each sign-in and sign-out. */
  ends: Set<() => void>;
  /** The account of the stored tokens (their sub claim): another tab sharing the store may sign in as someone else. */
  subject(): Promise<unknown>;
}

async function* subscribe(
  client: ParleyClient,
  refresh: () => Promise<Tokens>,
  session: Session,
  o: SubscribeOptions,
): AsyncGenerator<LiveItem> {
  // A subscription belongs to the sign-in it began in: once signed out,
  // or in as someone else, it ends, and never resumes another account's
  // events from this one's cursor.
  const started = session.generation();
  const account = await session.subject();
  const signedOut = () => new ConnectError("signed out", Code.Unauthenticated);
  let everUp = false;
  let cursor = o.cursor ?? "";
  let failures = 0;
  let resync = false;
  const maxBackoff = o.maxBackoffMs ?? 30_000;
  while (!o.signal?.aborted) {
    if (session.generation() !== started) throw signedOut();
    const ctl = new AbortController();
    const ended = () => ctl.abort(signedOut());
    session.ends.add(ended);
    let silence: ReturnType<typeof setTimeout> | undefined;
    const stop = () => {
      // The consumer may never resume the generator; nothing of it may
      // stay pending.
      clearTimeout(silence);
      ctl.abort();
    };
    o.signal?.addEventListener("abort", stop);
    const quiet = () => {
      clearTimeout(silence);
      silence = setTimeout(() => ctl.abort(new ConnectError("stream went silent", Code.Unavailable)), silenceMs);
    };
    let upSince = 0;
    let failure: unknown = new ConnectError("the server ended the stream", Code.Unavailable);
    try {
      quiet();
      for await (const res of client.live.subscribe({ resumeCursor: cursor }, { signal: ctl.signal })) {
        quiet();
        const ev = res.event;
        if (!ev) continue;
        if (ev.kind.case === "ready") {
          upSince = Date.now();
          everUp = true;
          if (resync) {
            // Only now, with the new stream open, may the app reload:
            // whatever changes after its reload comes on this stream.
            resync = false;
            yield { kind: "resync" };
          }
        }
        if (ev.cursor) cursor = ev.cursor;
        if (ev.kind.case === "heartbeat" && !o.heartbeats) continue;
        yield { kind: "event", event: ev };
      }
      // A clean end: the server is shutting down. Reconnect, to another
      // instance, after a short wait.
    } catch (err) {
      if (o.signal?.aborted) return;
      failure = err;
    } finally {
      clearTimeout(silence);
      o.signal?.removeEventListener("abort", stop);
      session.ends.delete(ended);
      ctl.abort();
    }
    if (o.signal?.aborted) return;
    if (session.generation() !== started || (await session.subject()) !== account) throw signedOut();
    const ce = ConnectError.from(failure);
    const expired = ce.code === Code.FailedPrecondition || (ce.code === Code.InvalidArgument && cursor !== "");
    if (expired && cursor !== "") {
      // Subscribe's one precondition (ErrorInfo reason CURSOR_EXPIRED):
      // the events since the cursor are gone; or the cursor is none the
      // server reads (stored corrupt, or from another server). Start
      // from now, and tell the consumer to reload once the new stream
      // is open.
      cursor = "";
      resync = true;
      continue;
    }
    if (!expired && !everUp && permanent.has(ce.code)) {
      // Trying again would get the same answer: a wrong base URL or a
      // proxy that does not route the stream (UNIMPLEMENTED), a request
      // the server refuses as it stands. (Once a stream of this
      // subscription was up, such answers are a proxy's during a
      // deploy: it tries again.)
      throw ce;
    }
    if (ce.code === Code.Unauthenticated) {
      try {
        await refresh();
        if (upSince) {
          // The server ends a stream when the access token it was opened
          // with expires. That is no failure: with the fresh token,
          // resume from the cursor at once, without backing off.
          o.onDisconnect?.(ce, 0);
          continue;
        }
      } catch (rerr) {
        if (ConnectError.from(rerr).code === Code.Unauthenticated) throw rerr; // signed out
      }
    }
    if (upSince && Date.now() - upSince > stableMs) failures = 0;
    let wait = Math.min(maxBackoff, 250 * 2 ** Math.min(failures, 10)) * (0.5 + Math.random() / 2);
    // A refusal that says when to come back (RESOURCE_EXHAUSTED: too
    // many streams open) is heeded.
    const retryAfter = Number(ce.metadata.get("retry-after"));
    if (retryAfter > 0) wait = Math.max(wait, Math.min(retryAfter * 1000, Math.max(maxBackoff, 60_000)));
    failures++;
    o.onDisconnect?.(ce, wait);
    // The wait ends early when the consumer stops, or the session ends.
    const waitCtl = new AbortController();
    const endWait = () => waitCtl.abort();
    session.ends.add(endWait);
    o.signal?.addEventListener("abort", endWait);
    if (o.signal?.aborted) endWait();
    try {
      await delay(wait, waitCtl.signal);
    } finally {
      session.ends.delete(endWait);
      o.signal?.removeEventListener("abort", endWait);
    }
  }
}

function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", done);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}

async function upload(
  client: ParleyClient,
  doFetch: typeof globalThis.fetch,
  withToken: <T>(call: (token: string) => Promise<T>) => Promise<T>,
  file: Blob,
  o: UploadOptions,
): Promise<Media> {
  const fileName = o.fileName ?? ("name" in file && typeof file.name === "string" && file.name ? file.name : "file");
  const contentType = o.contentType || file.type || "application/octet-stream";
  const created = await client.media.createUpload(
    {
      target: o.avatar ? { case: "avatar", value: true } : { case: "chatId", value: o.chatId ?? "" },
      fileName,
      contentType,
      size: BigInt(file.size),
      clientUploadId: o.clientUploadId ?? "",
    },
    { signal: o.signal },
  );
  if (!created.uploadUrl) {
    // A retry: the file arrived already, or is arriving through another
    // call.
    if (created.media?.state === MediaState.READY) return created.media;
    throw new ConnectError("the upload is in progress in another call; retry later", Code.Aborted);
  }
  const url = client.url(created.uploadUrl);
  const body = await withToken((token) =>
    typeof XMLHttpRequest !== "undefined"
      ? putWithXHR(url, token, file, o)
      : putWithFetch(doFetch, url, token, file, o),
  );
  return fromJson(MediaSchema, body as JsonValue, { ignoreUnknownFields: true });
}

/** In browsers, XMLHttpRequest is what reports upload progress. */
function putWithXHR(url: string, token: string, file: Blob, o: UploadOptions): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.upload.onprogress = (e) => o.onProgress?.(e.loaded, file.size);
    xhr.onload = () => {
      let body: unknown;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = { message: xhr.responseText };
      }
      if (xhr.status === 200) {
        o.onProgress?.(file.size, file.size);
        resolve(body);
      } else {
        reject(uploadError(xhr.status, body));
      }
    };
    xhr.onerror = () => reject(new ConnectError("upload failed: network error", Code.Unavailable));
    xhr.onabort = () => reject(new ConnectError("upload aborted", Code.Canceled));
    if (o.signal?.aborted) {
      reject(new ConnectError("upload aborted", Code.Canceled));
      return;
    }
    const abort = () => xhr.abort();
    o.signal?.addEventListener("abort", abort);
    xhr.onloadend = () => o.signal?.removeEventListener("abort", abort);
    xhr.send(file);
  });
}

/** Elsewhere (Node), fetch with a streamed body counts the bytes read. */
async function putWithFetch(
  doFetch: typeof globalThis.fetch,
  url: string,
  token: string,
  file: Blob,
  o: UploadOptions,
): Promise<unknown> {
  let sent = 0;
  const counted = file.stream().pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, ctl) {
        sent += chunk.byteLength;
        o.onProgress?.(sent, file.size);
        ctl.enqueue(chunk);
      },
    }),
  );
  let res: Response;
  try {
    res = await doFetch(url, {
      method: "PUT",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/octet-stream" },
      body: counted,
      signal: o.signal,
      // Required by fetch for a streamed request body.
      duplex: "half",
    } as RequestInit);
  } catch (err) {
    if (o.signal?.aborted) throw new ConnectError("upload aborted", Code.Canceled);
    throw new ConnectError(`upload failed: ${String(err)}`, Code.Unavailable);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = { message: text };
  }
  if (res.status !== 200) throw uploadError(res.status, body);
  return body;
}

const httpCodes: Record<number, Code> = {
  400: Code.InvalidArgument,
  401: Code.Unauthenticated,
  403: Code.PermissionDenied,
  404: Code.NotFound,
  408: Code.DeadlineExceeded,
  409: Code.FailedPrecondition,
  413: Code.ResourceExhausted,
  503: Code.Unavailable,
};

/** Connect's code names, as the server writes them in error bodies. */
const codeNames: Record<string, Code> = Object.fromEntries(
  Object.entries(Code)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [k.replace(/[A-Z]/g, (c, i) => (i ? "_" : "") + c.toLowerCase()), v as Code]),
);

function uploadError(status: number, body: unknown): ConnectError {
  const o = typeof body === "object" && body ? (body as { message?: unknown; code?: unknown }) : {};
  const msg = o.message !== undefined ? String(o.message) : `HTTP ${status}`;
  const code = (typeof o.code === "string" ? codeNames[o.code] : undefined) ?? httpCodes[status] ?? Code.Unknown;
  return new ConnectError(msg, code);
}

async function httpError(res: Response): Promise<ConnectError> {
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  return uploadError(res.status, body);
}

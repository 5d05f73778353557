// End-to-end tests of @parley/client against a real Parley server, over
// the Connect and gRPC-Web protocols.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { crc32, deflateSync } from "node:zlib";

import { timestampDate } from "@bufbuild/protobuf/wkt";

import {
  Code,
  ConnectError,
  createParleyClient,
  MediaState,
  memoryTokenStore,
  type LiveItem,
} from "../src/index.js";
import { Proxy, startServer, type TestServer } from "./harness.js";

// Access tokens live 2 s here, so that tests see them expire.
const tokenTTL = ["-access-token-ttl", "2s"];

let server: TestServer;
before(async () => {
  server = await startServer(tokenTTL);
});
after(async () => {
  await server?.stop();
});

let seq = 0;
function unique(prefix: string) {
  return `${prefix}${process.pid}x${++seq}`;
}

type Protocol = "connect" | "grpc-web";

async function newUser(
  protocol: Protocol,
  baseUrl = server.url,
  extra: { onRefresh?: () => void; fetch?: typeof globalThis.fetch } = {},
) {
  const client = createParleyClient({ baseUrl, protocol, refreshMarginMs: 0, onRefresh: extra.onRefresh, fetch: extra.fetch });
  const name = unique("ts");
  await client.register(name, `${name}@example.com`, "correct horse battery staple");
  const me = await client.users.getMe({});
  return { client, id: me.me!.user!.id, name };
}

/** next pulls items until one matches, failing after timeoutMs. */
async function next(
  it: AsyncIterator<LiveItem>,
  match: (item: LiveItem) => boolean,
  timeoutMs = 15_000,
): Promise<LiveItem> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await Promise.race([
      it.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("timed out waiting for a live event")), Math.max(left, 0));
      }),
    ]).finally(() => clearTimeout(timer));
    if (r.done) throw new Error("stream ended");
    if (match(r.value)) return r.value;
  }
}

const isReady = (i: LiveItem) => i.kind === "event" && i.event.kind.case === "ready";
const created = (i: LiveItem) => (i.kind === "event" && i.event.kind.case === "messageCreated" ? i.event.kind.value.message : undefined);

/** A w×h RGB PNG, built by hand. */
function png(w: number, h: number): Uint8Array<ArrayBuffer> {
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, "latin1"), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) raw.set([x % 256, y % 256, (x * y) % 256], y * (w * 3 + 1) + 1 + x * 3);
  }
  const all = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
  return new Uint8Array(all); // a copy on a plain ArrayBuffer
}

for (const protocol of ["connect", "grpc-web"] as const) {
  describe(protocol, () => {
    test("register, chat, send and receive live", async () => {
      const alice = await newUser(protocol);
      const bob = await newUser(protocol);
      const chat = await alice.client.chats.createPrivateChat({ peerId: bob.id });
      const stop = new AbortController();
      const it = bob.client.subscribe({ signal: stop.signal })[Symbol.asyncIterator]();
      await next(it, isReady);
      const sent = await alice.client.messages.sendMessage({ chatId: chat.chat!.id, clientMessageId: "m1", text: "hello bob" });
      const got = created(await next(it, (i) => created(i)?.id === sent.message!.id));
      assert.equal(got?.text, "hello bob");
      assert.equal(got?.senderId, alice.id);
      stop.abort();
    });

    test("account life cycle: signed-out calls, export, push key, deletion", async () => {
      // The calls a signed-out client makes go without a token.
      const stranger = createParleyClient({ baseUrl: server.url, protocol });
      await stranger.account.requestPasswordReset({ email: `${unique("nobody")}@example.com` });
      const { publicKey } = await stranger.push.getVapidPublicKey({});
      assert.match(publicKey, /^[A-Za-z0-9_-]{87}$/, "an uncompressed P-256 point, base64url");

      const alice = await newUser(protocol);
      const bob = await newUser(protocol);
      const first = await alice.client.exports.requestExport({});
      assert.ok(first.created);
      const again = await alice.client.exports.requestExport({});
      assert.equal(again.export?.id, first.export?.id, "a request while one is under way returns it");
      await assert.rejects(
        bob.client.exports.getExport({ exportId: first.export!.id }),
        (err) => ConnectError.from(err).code === Code.NotFound,
      );

      await alice.client.auth.deleteAccount({ password: "correct horse battery staple" });
      const gone = await bob.client.users.getUser({ userId: alice.id });
      assert.equal(gone.user?.deleted, true);
      await assert.rejects(
        alice.client.chats.listChats({}),
        (err) => ConnectError.from(err).code === Code.Unauthenticated,
      );
    });

    test("conversation features: replies, mentions, reactions, pins, search, invites", async () => {
      const alice = await newUser(protocol);
      const bob = await newUser(protocol);
      const carol = await newUser(protocol);
      const group = (await alice.client.chats.createGroupChat({ name: "ts group", memberIds: [bob.id] })).chat!;
      const stop = new AbortController();
      const it = bob.client.subscribe({ signal: stop.signal })[Symbol.asyncIterator]();
      await next(it, isReady);

      const question = (await alice.client.messages.sendMessage({ chatId: group.id, clientMessageId: "q", text: "Où est le café?" })).message!;
      const answer = (
        await bob.client.messages.sendMessage({
          chatId: group.id, clientMessageId: "a", text: "@alice ici", replyToMessageId: question.id, mentionUserIds: [alice.id],
        })
      ).message!;
      assert.equal(answer.replyTo?.messageId, question.id);
      assert.equal(answer.replyTo?.preview, "Où est le café?");
      assert.deepEqual(answer.mentionedUserIds, [alice.id]);
      const listed = await alice.client.chats.getChat({ chatId: group.id });
      assert.equal(listed.chat?.unreadMentionCount, 1n);

      await alice.client.messages.addReaction({ chatId: group.id, messageId: answer.id, emoji: "👍" });
      const reacted = await next(it, (i) => i.kind === "event" && i.event.kind.case === "reactionsChanged");
      assert.ok(reacted.kind === "event" && reacted.event.kind.case === "reactionsChanged");
      assert.deepEqual(
        reacted.event.kind.value.reactions.map((r) => [r.emoji, r.count]),
        [["👍", 1]],
      );

      await alice.client.messages.pinMessage({ chatId: group.id, messageId: question.id });
      const pins = await bob.client.messages.listPinnedMessages({ chatId: group.id });
      assert.deepEqual(pins.messages.map((m) => m.id), [question.id]);

      const found = await bob.client.messages.searchMessages({ query: "CAFE" });
      assert.deepEqual(found.messages.map((m) => m.id), [question.id]);

      const link = (await alice.client.chats.createInviteLink({ chatId: group.id })).inviteLink!;
      const joined = await carol.client.chats.joinChatByInvite({ code: link.code });
      assert.equal(joined.chat?.id, group.id);
      stop.abort();
    });

    test("a device clock ahead of the server's does not refresh before every call", async () => {
      const realNow = Date.now;
      // Ahead by an hour: every token looks expired to this clock.
      Date.now = () => realNow() + 3_600_000;
      try {
        let refreshes = 0;
        const alice = await newUser(protocol, server.url, { onRefresh: () => refreshes++ });
        for (let i = 0; i < 5; i++) {
          assert.equal((await alice.client.users.getMe({})).me?.user?.id, alice.id);
        }
        assert.ok(refreshes <= 1, `${refreshes} refreshes for 5 calls within a token's life`);
      } finally {
        Date.now = realNow;
      }
    });

    test("refreshes an expired access token once for many calls", async () => {
      let refreshes = 0;
      const alice = await newUser(protocol, server.url, { onRefresh: () => refreshes++ });
      const tokens = (await alice.client.tokenStore.get())!;
      // Let the 2-second token expire: the client's clock says so.
      const wait = timestampDate(tokens.accessTokenExpiresAt!).getTime() - Date.now() + 50;
      await new Promise((r) => setTimeout(r, Math.max(wait, 0)));
      const results = await Promise.all(Array.from({ length: 5 }, () => alice.client.users.getMe({})));
      assert.ok(results.every((r) => r.me?.user?.id === alice.id));
      assert.equal(refreshes, 1);

      // The server refuses a token the client thinks valid (revoked, or
      // clocks apart): the calls refresh once and are retried.
      const current = (await alice.client.tokenStore.get())!;
      const forged: typeof current = { ...current, accessToken: current.accessToken.slice(0, -4) + "AAAA" };
      await alice.client.tokenStore.set(forged);
      const again = await Promise.all(Array.from({ length: 5 }, () => alice.client.users.getMe({})));
      assert.ok(again.every((r) => r.me?.user?.id === alice.id));
      assert.equal(refreshes, 2);

      // After a logout, calls fail as unauthenticated; logging in again
      // (by email, in another case) works.
      await alice.client.logout();
      await assert.rejects(alice.client.users.getMe({}), (err) => ConnectError.from(err).code === Code.Unauthenticated);
      await assert.rejects(alice.client.login(alice.name, "wrong password"), (err) => ConnectError.from(err).code === Code.Unauthenticated);
      await alice.client.login(`${alice.name.toUpperCase()}@EXAMPLE.COM`, "correct horse battery staple");
      assert.equal((await alice.client.users.getMe({})).me?.user?.id, alice.id);
    });

    test("resumes after a forced disconnect without losing a message", async () => {
      const proxy = await Proxy.start(server.url);
      try {
        const alice = await newUser(protocol);
        const bob = await newUser(protocol, proxy.url);
        const chat = (await alice.client.chats.createPrivateChat({ peerId: bob.id })).chat!;
        let disconnects = 0;
        const stop = new AbortController();
        const it = bob.client
          .subscribe({ signal: stop.signal, onDisconnect: () => disconnects++, maxBackoffMs: 500 })
          [Symbol.asyncIterator]();
        await next(it, isReady);
        await alice.client.messages.sendMessage({ chatId: chat.id, clientMessageId: "r0", text: "before" });
        await next(it, (i) => created(i)?.text === "before");

        proxy.cut();
        for (let n = 1; n <= 5; n++) {
          await alice.client.messages.sendMessage({ chatId: chat.id, clientMessageId: `r${n}`, text: `while away ${n}` });
        }
        const seen: bigint[] = [];
        while (seen.length < 5) {
          const m = created(await next(it, (i) => created(i) !== undefined));
          seen.push(m!.seq);
        }
        assert.deepEqual(seen, [2n, 3n, 4n, 5n, 6n]);
        assert.ok(disconnects >= 1, "the stream should have seen the cut");
        stop.abort();
      } finally {
        await proxy.close();
      }
    });

    test("a stream outlives its access tokens, resuming at once and losing nothing", async () => {
      const alice = await newUser(protocol);
      const bob = await newUser(protocol);
      const chat = (await alice.client.chats.createPrivateChat({ peerId: bob.id })).chat!;
      const ends: { code: Code; wait: number }[] = [];
      const stop = new AbortController();
      const it = bob.client
        .subscribe({ signal: stop.signal, onDisconnect: (err, wait) => ends.push({ code: ConnectError.from(err).code, wait }) })
        [Symbol.asyncIterator]();
      await next(it, isReady);
      // Tokens live 2 s: sending for 5 s spans at least two expiries,
      // each of which ends the stream on the server.
      const seen: bigint[] = [];
      const deadline = Date.now() + 5_000;
      for (let n = 1; Date.now() < deadline; n++) {
        const sent = await alice.client.messages.sendMessage({ chatId: chat.id, clientMessageId: `e${n}`, text: `${n}` });
        const got = created(await next(it, (i) => created(i) !== undefined));
        assert.equal(got?.id, sent.message!.id);
        seen.push(got!.seq);
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.deepEqual(seen, seen.map((_, i) => BigInt(i + 1)), "every message once, in order");
      assert.ok(ends.length >= 2, `the stream should have ended at each expiry (ended ${ends.length} times)`);
      for (const e of ends) {
        assert.equal(e.code, Code.Unauthenticated);
        assert.equal(e.wait, 0, "an expiry is no failure: no backoff");
      }
      stop.abort();
    });

    test("surfaces the re-sync instruction", async () => {
      const alice = await newUser(protocol);
      const stop = new AbortController();
      // A well-formed cursor the server does not hold.
      const it = alice.client.subscribe({ cursor: "1-0", signal: stop.signal })[Symbol.asyncIterator]();
      const first = await next(it, () => true);
      assert.equal(first.kind, "resync");
      await next(it, isReady);
      stop.abort();
    });

    test("reads a cursor the server cannot as one expired, and stops on what retrying cannot mend", async () => {
      const alice = await newUser(protocol);
      const stop = new AbortController();
      const it = alice.client.subscribe({ cursor: "not-a-cursor", signal: stop.signal })[Symbol.asyncIterator]();
      const first = await next(it, () => true);
      assert.equal(first.kind, "resync");
      await next(it, isReady);
      stop.abort();

      // No stream at this address: UNIMPLEMENTED, thrown, not retried.
      // (With the tokens of a user just signed up: they outlive the call.)
      const bob = await newUser(protocol);
      const lost = createParleyClient({ baseUrl: `${server.url}/nowhere`, protocol, refreshMarginMs: 0, tokenStore: bob.client.tokenStore });
      let disconnects = 0;
      await assert.rejects(
        (async () => {
          for await (const _ of lost.subscribe({ onDisconnect: () => disconnects++ })) {
            // nothing comes
          }
        })(),
        (err: unknown) => ConnectError.from(err).code === Code.Unimplemented,
      );
      assert.equal(disconnects, 0);
    });

    test("a subscription ends with the sign-in it began in", async () => {
      const alice = await newUser(protocol);
      const bob = await newUser(protocol);
      const it = alice.client.subscribe({})[Symbol.asyncIterator]();
      await next(it, isReady);
      // Alice signs out and bob in, on the same client, at once: her
      // stream does not go on with his events.
      await alice.client.logout();
      await alice.client.login(bob.name, "correct horse battery staple");
      await assert.rejects(
        next(it, () => false),
        (err: unknown) => ConnectError.from(err).code === Code.Unauthenticated,
      );
    });

    test("a subscription ends when another tab sharing the tokens signs in as someone else", async () => {
      const alice = await newUser(protocol);
      const bob = await newUser(protocol);
      const it = alice.client.subscribe({})[Symbol.asyncIterator]();
      await next(it, isReady);
      // Another client on the same token store (a tab) signs in as bob;
      // alice's stream ends as her 2-second token does, and does not go
      // on as bob's.
      const tab = createParleyClient({ baseUrl: server.url, protocol, refreshMarginMs: 0, tokenStore: alice.client.tokenStore });
      await tab.login(bob.name, "correct horse battery staple");
      await assert.rejects(
        next(it, () => false),
        (err: unknown) => ConnectError.from(err).code === Code.Unauthenticated,
      );
    });

    test("waits as long as a refusal asks before trying again", async () => {
      const alice = await newUser(protocol);
      const stop = new AbortController();
      // A session may have 10 streams open (-live-max-streams-per-session):
      // of 11, one is refused (whichever: they reconnect as tokens expire).
      let refused: (wait: number) => void = () => {};
      const waited = new Promise<number>((resolve) => (refused = resolve));
      const onDisconnect = (err: unknown, wait: number) => {
        if (ConnectError.from(err).code === Code.ResourceExhausted) refused(wait);
      };
      for (let i = 0; i < 11; i++) {
        const it = alice.client.subscribe({ signal: stop.signal, onDisconnect })[Symbol.asyncIterator]();
        void (async () => {
          try {
            while (!(await it.next()).done) {
              // drain
            }
          } catch {
            // ended with the test
          }
        })();
      }
      const wait = await waited;
      assert.ok(wait >= 1000, `waits ${wait} ms after a refusal with Retry-After`);
      stop.abort();
    });

    test("an upload or a download refused for its token is tried once more with a fresh one", async () => {
      // The first PUT and the first GET carry a token the server refuses
      // (as one revoked after the client last refreshed would be).
      const spoilt = new Set<string>();
      const spoil: typeof globalThis.fetch = (input, init) => {
        const method = init?.method ?? "GET";
        const headers = new Headers(init?.headers);
        const auth = headers.get("Authorization");
        if ((method === "PUT" || method === "GET") && auth && !spoilt.has(method)) {
          spoilt.add(method);
          headers.set("Authorization", auth.slice(0, -4) + "AAAA");
          return globalThis.fetch(input, { ...init, headers });
        }
        return globalThis.fetch(input, init);
      };
      let refreshes = 0;
      const alice = await newUser(protocol, server.url, { fetch: spoil, onRefresh: () => refreshes++ });
      const bob = await newUser(protocol);
      const chat = (await alice.client.chats.createPrivateChat({ peerId: bob.id })).chat!;
      const data = png(40, 30);
      const media = await alice.client.upload(new Blob([data], { type: "image/png" }), { chatId: chat.id, fileName: "p.png" });
      assert.equal(media.width, 40);
      await alice.client.messages.sendMessage({ chatId: chat.id, clientMessageId: "pic", mediaIds: [media.id] });
      const got = new Uint8Array(await (await alice.client.download(media.url)).arrayBuffer());
      assert.deepEqual(got, data);
      assert.deepEqual([...spoilt].sort(), ["GET", "PUT"]);
      assert.equal(refreshes, 2);
    });

    test("download() sends the access token to its server only", async () => {
      const seen: { url: string; auth: string | null }[] = [];
      const record: typeof globalThis.fetch = (input, init) => {
        const url = input instanceof Request ? input.url : String(input);
        if (!url.startsWith(server.url)) {
          seen.push({ url, auth: new Headers(init?.headers).get("Authorization") });
          return Promise.resolve(new Response("elsewhere"));
        }
        return globalThis.fetch(input, init);
      };
      const alice = await newUser(protocol, server.url, { fetch: record });
      assert.equal(await (await alice.client.download("//elsewhere.example/x")).text(), "elsewhere");
      // Of the server's scheme (http, or https behind a proxy).
      assert.deepEqual(seen, [{ url: new URL("//elsewhere.example/x", server.url).toString(), auth: null }]);
    });

    test("uploads and downloads an image", async () => {
      const alice = await newUser(protocol);
      const bob = await newUser(protocol);
      const chat = (await alice.client.chats.createPrivateChat({ peerId: bob.id })).chat!;
      const data = png(400, 300);
      const progress: number[] = [];
      const media = await alice.client.upload(new Blob([data], { type: "image/png" }), {
        chatId: chat.id,
        fileName: "picture.png",
        onProgress: (sent) => progress.push(sent),
      });
      assert.equal(media.contentType, "image/png");
      assert.equal(media.width, 400);
      assert.equal(media.height, 300);
      assert.equal(progress.at(-1), data.length);
      assert.ok(progress.every((v, i) => i === 0 || v >= progress[i - 1]), "progress only grows");

      const stop = new AbortController();
      const it = bob.client.subscribe({ signal: stop.signal })[Symbol.asyncIterator]();
      await next(it, isReady);
      await alice.client.messages.sendMessage({ chatId: chat.id, clientMessageId: "pic", mediaIds: [media.id] });
      const msg = created(await next(it, (i) => (created(i)?.attachments.length ?? 0) > 0))!;
      assert.equal(msg.attachments[0].mediaId, media.id);
      stop.abort();

      // With the access token, and with a signed URL.
      const viaToken = new Uint8Array(await (await bob.client.download(msg.attachments[0].url)).arrayBuffer());
      assert.deepEqual(viaToken, data);
      const signed = await bob.client.media.getMedia({ mediaId: media.id });
      const res = await fetch(bob.client.url(signed.downloadUrl));
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("x-content-type-options"), "nosniff");
      assert.deepEqual(new Uint8Array(await res.arrayBuffer()), data);
      const thumb = await bob.client.download(signed.thumbnailDownloadUrl);
      assert.equal(thumb.type, "image/jpeg");

      // Retried with its client_upload_id, an upload whose file arrived
      // is the first one, and sends nothing again.
      const once = { chatId: chat.id, fileName: "retried.png", clientUploadId: `retry-${protocol}` };
      const first = await alice.client.upload(new Blob([data], { type: "image/png" }), once);
      let resent = 0;
      const again = await alice.client.upload(new Blob([data], { type: "image/png" }), {
        ...once,
        onProgress: () => resent++,
      });
      assert.equal(again.id, first.id);
      assert.equal(again.state, MediaState.READY);
      assert.equal(resent, 0, "a retry of an upload whose file arrived sends no bytes");

      // A refused upload is a typed error.
      await assert.rejects(
        alice.client.upload(new Blob(["<html></html>"]), { chatId: chat.id, fileName: "x.png", contentType: "image/png" }),
        (err) => ConnectError.from(err).code === Code.InvalidArgument,
      );
    });
  });
}

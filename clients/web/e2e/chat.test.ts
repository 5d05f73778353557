// Browser end-to-end test: two users chat live in the web app, served by a
// real Parley server, in Debian's Chromium driven by playwright-core.

import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium, type Browser, type Page } from "playwright-core";

const webRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const repoRoot = path.resolve(webRoot, "../..");
const shots = path.join(webRoot, "test-results");

let server: ChildProcess;
let baseUrl = "";
let browser: Browser;
let dir = "";

// The server's flags; behind nginx (PARLEY_URL, scripts/behind-nginx),
// the instances' must be these.
const serverArgs = ["-web-dir", path.join(webRoot, "dist")];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "parley-web-"));
  const deployed = process.env.PARLEY_URL;
  if (deployed) {
    if (process.env.PARLEY_SERVER_ARGS !== serverArgs.join(" ")) {
      throw new Error(`the servers at ${deployed} run with "${process.env.PARLEY_SERVER_ARGS}", this test needs "${serverArgs.join(" ")}"`);
    }
    baseUrl = deployed;
  } else {
    let bin = process.env.PARLEY_BIN;
    if (!bin) {
      bin = path.join(dir, "parley");
      execFileSync("go", ["build", "-o", bin, "."], { cwd: repoRoot, stdio: "inherit" });
    }
    server = spawn(bin, [
      "-addr", "127.0.0.1:0",
      "-data-dir", path.join(dir, "data"),
      "-log-level", "warn",
      ...serverArgs,
    ], { stdio: ["ignore", "pipe", "inherit"] });
    baseUrl = await new Promise<string>((resolve, reject) => {
      createInterface({ input: server.stdout! }).on("line", (line) => {
        const m = /^Parley is listening on (\S+)/.exec(line);
        if (m) resolve(m[1]);
      });
      server.on("exit", (code) => reject(new Error(`server exited with ${code}`)));
    });
  }
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // Behind nginx the certificate is one scripts/behind-nginx made.
      ...(baseUrl.startsWith("https:") ? ["--ignore-certificate-errors"] : []),
    ],
  });
});

after(async () => {
  await browser?.close();
  if (server) {
    const exited = new Promise((r) => server.once("exit", r));
    server.kill("SIGINT");
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
});

/** A w×h PNG with a gradient, drawn by the browser. */
async function png(page: Page, w: number, h: number): Promise<Buffer> {
  const url = await page.evaluate(([w, h]) => {
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    const g = c.getContext("2d")!;
    const grad = g.createLinearGradient(0, 0, w, h);
    grad.addColorStop(0, "#1e3c72");
    grad.addColorStop(0.5, "#e96443");
    grad.addColorStop(1, "#f9d423");
    g.fillStyle = grad;
    g.fillRect(0, 0, w, h);
    return c.toDataURL("image/png");
  }, [w, h]);
  return Buffer.from(url.slice(url.indexOf(",") + 1), "base64");
}

async function register(page: Page, name: string) {
  await page.goto(baseUrl);
  await page.fill("input[name=username]", name);
  await page.fill("input[name=email]", `${name}@example.com`);
  await page.fill("input[name=password]", "correct horse battery staple");
  await page.click("[data-testid=register]");
  await page.waitForSelector(`[data-testid=me]:has-text("${name}")`);
}

test("two users chat live in the browser", async () => {
  const suffix = String(process.pid);
  const alice = `alice${suffix}`;
  const bob = `bob${suffix}`;
  const a = await (await browser.newContext({ viewport: { width: 1000, height: 700 } })).newPage();
  const b = await (await browser.newContext({ viewport: { width: 1000, height: 700 } })).newPage();
  await register(a, alice);
  await register(b, bob);

  // Alice starts a private chat with Bob; it appears in Bob's list live.
  await a.fill("[data-testid=new-chat-users]", bob);
  await a.click("[data-testid=new-chat]");
  await a.waitForSelector(`[data-testid=chat-title]:has-text("${bob}")`);
  await b.waitForSelector(`[data-testid=chat][data-title="${alice}"]`);

  // A message: Bob's list shows it unread with its preview.
  await a.fill("[data-testid=composer]", "Hi Bob!");
  await a.click("[data-testid=send]");
  const bobsChat = b.locator(`[data-testid=chat][data-title="${alice}"]`);
  await bobsChat.locator("[data-testid=unread]:has-text('1')").waitFor();
  assert.equal(await bobsChat.locator("[data-testid=preview]").textContent(), "Hi Bob!");
  // The chat is Alice's request: she sees no ticks of Bob's until he
  // accepts it.
  await a.locator("[data-testid=ticks][data-status=sent]").waitFor();

  // Bob opens the chat, reads it and accepts it: Alice's tick turns to read.
  await bobsChat.click();
  await b.locator("[data-testid=message] [data-testid=text]:has-text('Hi Bob!')").waitFor();
  await b.click("[data-testid=accept-request]");
  await a.locator("[data-testid=ticks][data-status=read]").waitFor();

  // Bob types: Alice sees it; then his reply arrives.
  await b.locator("[data-testid=composer]").pressSequentially("Hello Alice", { delay: 20 });
  await a.locator(`[data-testid=typing]:has-text("${bob} is typing")`).waitFor();
  await b.click("[data-testid=send]");
  await a.locator("[data-testid=message] [data-testid=text]:has-text('Hello Alice')").waitFor();

  // Alice sends an image, with upload progress; Bob sees it.
  await a.setInputFiles("[data-testid=file]", { name: "sunset.png", mimeType: "image/png", buffer: await png(a, 640, 400) });
  await a.click("[data-testid=send]");
  const img = b.locator("[data-testid=image]");
  await img.waitFor();
  await b.waitForFunction(() => {
    const el = document.querySelector<HTMLImageElement>("[data-testid=image]");
    return !!el && el.complete && el.naturalWidth > 0;
  });
  assert.equal(await a.$eval("[data-testid=upload-progress]", (el) => (el as HTMLProgressElement).value), 100);
  await a.locator("[data-testid=image]").waitFor();

  // A group: Alice names it and adds Bob; it appears in his list.
  await a.fill("[data-testid=new-chat-users]", bob);
  await a.fill("[data-testid=new-chat-name]", "Weekend plans");
  await a.click("[data-testid=new-chat]");
  await a.waitForSelector(`[data-testid=chat-title]:has-text("Weekend plans")`);
  await b.waitForSelector(`[data-testid=chat][data-title="Weekend plans"]`);
  await a.fill("[data-testid=composer]", "Hiking on Saturday?");
  await a.click("[data-testid=send]");
  await b.locator(`[data-testid=chat][data-title="Weekend plans"] [data-testid=unread]:has-text('1')`).waitFor();
  // Back to the private chat for the screenshots.
  await a.click(`[data-testid=chat][data-title="${bob}"]`);
  await a.locator("[data-testid=image]").waitFor();

  mkdirSync(shots, { recursive: true });
  await a.screenshot({ path: path.join(shots, "alice.png") });
  await b.screenshot({ path: path.join(shots, "bob.png") });
});

/** The message of page p with this text. */
function message(p: Page, text: string) {
  return p.locator(`[data-testid=message][data-text=${JSON.stringify(text)}]`);
}

/** Clicks an action of a message, opening its menu first when closed. */
async function act(p: Page, text: string, action: string) {
  const m = message(p, text);
  if (!(await m.locator("[data-testid=actions]").isVisible())) await m.locator("[data-testid=message-menu]").click();
  await m.locator(action).click();
}

// One scenario in steps: a step that fails (its server part missing, say)
// is reported and the later steps still run.
test("replies, reactions, edits, search, mute and invite links", async (t) => {
  const suffix = String(process.pid);
  const carol = `carol${suffix}`;
  const dan = `dan${suffix}`;
  const c = await (await browser.newContext({ viewport: { width: 1100, height: 800 } })).newPage();
  const d = await (await browser.newContext({ viewport: { width: 1100, height: 800 } })).newPage();
  await register(c, carol);
  await register(d, dan);

  // Carol writes to Dan; he opens the chat.
  await c.fill("[data-testid=new-chat-users]", dan);
  await c.click("[data-testid=new-chat]");
  await c.waitForSelector(`[data-testid=chat-title]:has-text("${dan}")`);
  await c.fill("[data-testid=composer]", "Lunch at noon?");
  await c.click("[data-testid=send]");
  await d.click(`[data-testid=chat][data-title="${carol}"]`);
  await message(d, "Lunch at noon?").waitFor();

  await t.test("a reply shows its quote", async () => {
    await act(d, "Lunch at noon?", "[data-testid=reply]");
    await d.locator("[data-testid=composer-context][data-kind=reply]").waitFor();
    await d.fill("[data-testid=composer]", "Sure, where?");
    await d.click("[data-testid=send]");
    for (const p of [d, c]) {
      await message(p, "Sure, where?").locator("[data-testid=quote]:has-text('Lunch at noon?')").waitFor();
    }
    assert.equal(await message(c, "Sure, where?").locator("[data-testid=quote] strong").textContent(), carol);
  });

  await t.test("a double submit sends once", async () => {
    await c.fill("[data-testid=composer]", "Only once");
    await c.evaluate(() => {
      const form = document.querySelector<HTMLFormElement>("form.composer")!;
      form.requestSubmit();
      form.requestSubmit();
    });
    // Then another message: what the double submit made arrived before it.
    await message(c, "Only once").first().waitFor();
    await c.fill("[data-testid=composer]", "After it");
    await c.click("[data-testid=send]");
    await message(d, "After it").waitFor();
    assert.equal(await message(d, "Only once").count(), 1);
  });

  await t.test("a reaction is seen live by the other user", async () => {
    await act(d, "Lunch at noon?", "[data-testid=react][data-emoji='👍']");
    await message(d, "Lunch at noon?").locator("[data-testid=reaction][data-emoji='👍'][data-count='1'][data-mine=true]").waitFor();
    await message(c, "Lunch at noon?").locator("[data-testid=reaction][data-emoji='👍'][data-count='1'][data-mine=false]").waitFor();
  });

  await t.test("an edit", async () => {
    await act(c, "Lunch at noon?", "[data-testid=edit]");
    await c.locator("[data-testid=composer-context][data-kind=edit]").waitFor();
    assert.equal(await c.inputValue("[data-testid=composer]"), "Lunch at noon?");
    await c.fill("[data-testid=composer]", "Lunch at one?");
    await c.click("[data-testid=send]");
    await message(d, "Lunch at one?").locator("[data-testid=edited]").waitFor();
    await message(c, "Lunch at one?").locator("[data-testid=edited]").waitFor();
  });

  await t.test("a delete", async () => {
    await c.fill("[data-testid=composer]", "Oops, wrong chat");
    await c.click("[data-testid=send]");
    await message(d, "Oops, wrong chat").waitFor();
    await act(c, "Oops, wrong chat", "[data-testid=delete]");
    await d.locator("[data-testid=message][data-deleted=true] [data-testid=deleted]").waitFor();
    await message(d, "Oops, wrong chat").waitFor({ state: "detached" });
  });

  await t.test("a mute", async () => {
    await d.click("[data-testid=mute]");
    await d.locator(`[data-testid=chat][data-title="${carol}"][data-muted=true] [data-testid=muted-flag]`).waitFor();
    await d.locator("[data-testid=mute][data-muted=true]:has-text('Unmute')").waitFor();
  });

  await t.test("a second user joins a group by its invite link", async () => {
    await c.fill("[data-testid=new-chat-name]", "Book club");
    await c.click("[data-testid=new-chat]");
    await c.waitForSelector(`[data-testid=chat-title]:has-text("Book club")`);
    await c.click("[data-testid=chat-info]");
    await c.locator("[data-testid=member][data-role=admin]").waitFor();
    await c.fill("[data-testid=description-input]", "One book a month");
    await c.click("[data-testid=save-description]");
    await c.locator("[data-testid=description]:has-text('One book a month')").waitFor();
    await c.click("[data-testid=create-invite]");
    const link = await c.locator("[data-testid=invite][data-state=active] [data-testid=invite-url]").first().inputValue();
    assert.match(link, /[?&]invite=[A-Za-z0-9_-]{22}$/);
    await d.goto(link);
    await d.locator("[data-testid=invite-name]:has-text('Book club')").waitFor();
    assert.equal(await d.locator("[data-testid=invite-members]").textContent(), "1 member");
    await d.click("[data-testid=join-invite]");
    await d.waitForSelector(`[data-testid=chat-title]:has-text("Book club")`);
    await c.locator(`[data-testid=member][data-user="${dan}"]`).waitFor();
    await d.fill("[data-testid=composer]", "Thanks for the invite!");
    await d.click("[data-testid=send]");
    await message(c, "Thanks for the invite!").waitFor();
  });

  await t.test("a mention, a pin, receipts, a forward and an archive in the group", async () => {
    // Dan looks at the private chat while Carol mentions him in the group.
    await d.click(`[data-testid=chat][data-title="${carol}"]`);
    await d.waitForSelector(`[data-testid=chat-title]:has-text("${carol}")`);
    const text = `@${dan} pick the next book`;
    await c.fill("[data-testid=composer]", text);
    await c.click("[data-testid=send]");
    const club = d.locator(`[data-testid=chat][data-title="Book club"]`);
    await club.locator("[data-testid=mentions]:has-text('@1')").waitFor();
    await club.click();
    await d.locator("[data-testid=message][data-mentioned=true]").waitFor();
    await club.locator("[data-testid=mentions]").waitFor({ state: "detached" });

    // Carol pins it: Dan's pinned bar shows it live.
    await act(c, text, "[data-testid=pin-message]");
    await d.locator(`[data-testid=pinned-bar] [data-testid=pinned-latest]:has-text("pick the next book")`).waitFor();
    await message(d, text).locator("[data-testid=pin-mark]").waitFor();

    // Once Dan read it, Carol's receipts name him.
    await message(c, text).locator("[data-testid=ticks][data-status=read]").waitFor();
    await act(c, text, "[data-testid=receipts-button]");
    await message(c, text).locator(`[data-testid=read-by]:has-text("${dan}")`).waitFor();

    // Dan forwards it to his chat with Carol.
    const m = message(d, text);
    if (!(await m.locator("[data-testid=actions]").isVisible())) await m.locator("[data-testid=message-menu]").click();
    await m.locator("[data-testid=forward-target]").selectOption({ label: carol });
    await m.locator("[data-testid=forward]").click();
    await c.click(`[data-testid=chat][data-title="${dan}"]`);
    await message(c, text).locator(`[data-testid=forwarded]:has-text("Forwarded from ${carol}")`).waitFor();

    // Dan archives the group: it moves to his archived list, and back.
    await d.click(`[data-testid=chat][data-title="Book club"]`);
    await d.click("[data-testid=archive]");
    await club.waitFor({ state: "detached" });
    await d.click("[data-testid=show-archived]");
    await club.waitFor();
    await d.click("[data-testid=archive]:has-text('Unarchive')");
    await d.click("[data-testid=show-chats]");
    await club.waitFor();
  });

  await t.test("a search finds a message", async () => {
    await c.fill("[data-testid=search-input]", "lunch");
    await c.click("[data-testid=search]");
    const found = c.locator("[data-testid=search-result]", { hasText: "Lunch at one?" });
    await found.waitFor();
    await found.click();
    await c.waitForSelector(`[data-testid=chat-title]:has-text("${dan}")`);
    await message(c, "Lunch at one?").waitFor();
  });

  mkdirSync(shots, { recursive: true });
  await c.screenshot({ path: path.join(shots, "carol.png") });
  await d.screenshot({ path: path.join(shots, "dan.png") });
});

// Test harness: a real Parley server (the Go binary, embedded stores, a
// random port) and a TCP proxy that can cut connections.

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

export interface TestServer {
  url: string;
  stop(): Promise<void>;
}

/**
 * startServer runs the server binary PARLEY_BIN names (built from the
 * repository when unset) with embedded stores in a temp dir; or, when
 * PARLEY_URL is set, returns the deployment there (scripts/behind-nginx).
 */
export async function startServer(args: string[] = []): Promise<TestServer> {
  // The tests sign up many accounts from one address.
  args = ["-registrations-per-address", "100000", "-login-attempts-per-address", "100000", ...args];
  const deployed = process.env.PARLEY_URL;
  if (deployed) {
    // Instances behind nginx, started by scripts/behind-nginx with the
    // flags this test asks for.
    if (process.env.PARLEY_SERVER_ARGS !== args.join(" ")) {
      throw new Error(
        `the servers at ${deployed} run with "${process.env.PARLEY_SERVER_ARGS}", this test needs "${args.join(" ")}"`,
      );
    }
    return { url: deployed, async stop() {} };
  }
  const dir = mkdtempSync(path.join(tmpdir(), "parley-ts-"));
  let bin = process.env.PARLEY_BIN;
  if (!bin) {
    bin = path.join(dir, "parley");
    execFileSync("go", ["build", "-o", bin, "."], { cwd: repoRoot, stdio: "inherit" });
  }
  const child: ChildProcess = spawn(
    bin,
    [
      "-addr", "127.0.0.1:0",
      "-data-dir", path.join(dir, "data"),
      "-log-level", "warn",
      ...args,
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      const m = /^Parley is listening on (\S+)/.exec(line);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`server exited with ${code} before listening`)));
  });
  return {
    url,
    async stop() {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGINT");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Proxy forwards TCP connections to a server and can cut them all. */
export class Proxy {
  url = "";
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;

  private constructor(target: URL) {
    this.server = net.createServer((client) => {
      const upstream = net.connect(Number(target.port), target.hostname);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  static async start(target: string): Promise<Proxy> {
    const p = new Proxy(new URL(target));
    await new Promise<void>((r) => p.server.listen(0, "127.0.0.1", r));
    // TLS passes through: the certificate names 127.0.0.1.
    p.url = `${new URL(target).protocol}//127.0.0.1:${(p.server.address() as net.AddressInfo).port}`;
    return p;
  }

  /** cut drops every open connection, as a network failure would. */
  cut() {
    for (const s of this.sockets) s.destroy();
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}

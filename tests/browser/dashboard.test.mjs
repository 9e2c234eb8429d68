// The dashboard in a real browser: Debian's headless Chromium, driven by playwright-core.
// Starts `ostrakon playground` (3 members on 127.0.0.1), opens the dashboard, checks that
// the leader it shows is the cluster's leader (as etcdctl reports it), stops the leader
// from the page, and waits for the page to show a new leader. Screenshots are kept in
// target/browser-artifacts. Every wait is bounded; the playground is stopped at the end.
//
// Usage: node dashboard.test.mjs [path to the ostrakon binary]

import { spawn, execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const binary = process.argv[2] ?? resolve(root, "target/debug/ostrakon");
const artifacts = resolve(root, "target/browser-artifacts");
mkdirSync(artifacts, { recursive: true });
const endpoints = "127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579";
const deadline = (seconds) => Date.now() + seconds * 1000;
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

// etcdctl's output; with a member down, `endpoint status` fails yet prints the others.
function etcdctl(...args) {
  try {
    return execFileSync("etcdctl", [`--endpoints=${endpoints}`, "--command-timeout=2s", ...args], {
      env: { ...process.env, ETCDCTL_API: "3" },
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
  } catch (error) {
    if (error.stdout) return error.stdout;
    throw error;
  }
}

// The leader's name, as the members report it through etcdctl.
function clusterLeader() {
  const statuses = JSON.parse(etcdctl("endpoint", "status", "-w", "json"));
  const members = JSON.parse(etcdctl("member", "list", "-w", "json")).members;
  const leaderId = statuses.map((s) => s.Status.leader).find((id) => id);
  const leader = members.find((m) => BigInt(m.ID) === BigInt(leaderId));
  return leader?.name;
}

const playground = spawn(binary, ["playground", "--log-level", "warn"], { stdio: ["ignore", "pipe", "inherit"] });
let browser;
let load;
try {
  // Ready when a leader is known.
  let leader;
  for (const until = deadline(60); !leader; ) {
    assert.ok(Date.now() < until, "the playground elected no leader within 60 s");
    try { leader = clusterLeader(); } catch { await sleep(300); }
  }
  // A steady load (bounded: 600 puts), so the charts and progress have something to show.
  load = spawn("bash", ["-c",
    `for i in $(seq 1 600); do ETCDCTL_API=3 etcdctl --endpoints=${endpoints} put load/$i v >/dev/null 2>&1; done`],
    { stdio: "ignore" });

  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
  await page.goto("http://127.0.0.1:2379/dashboard");
  // Every member appears, and one leads.
  await page.waitForFunction(() => document.querySelectorAll("#members tbody tr").length === 3, null, { timeout: 20000 });
  await page.waitForFunction(() => document.getElementById("leader-name").textContent !== "none", null, { timeout: 20000 });
  await sleep(2000);
  const shown = await page.textContent("#leader-name");
  assert.equal(shown, clusterLeader(), "the dashboard shows the cluster's leader");
  const leaderRole = await page.getAttribute(`#members tr[data-member="${shown}"]`, "data-role");
  assert.equal(leaderRole, "leader");
  const followers = await page.locator("#progress tbody tr").count();
  assert.equal(followers, 2, "the leader's view of both followers is shown");
  // The range map: one data range over the whole keyspace, led by the cluster's leader.
  const rangeLeaders = await page.$$eval("#ranges tbody tr", rows => rows.map(row => row.dataset.leader));
  assert.deepEqual(rangeLeaders, [shown], "the range map shows the one range and its leader");
  await page.screenshot({ path: resolve(artifacts, "dashboard-before.png"), fullPage: true });
  console.log(`dashboard shows leader ${shown}; stopping it from the page`);

  await page.click(`#members tr[data-member="${shown}"] button[data-action="stop"]`);
  await page.waitForFunction(
    (old) => {
      const name = document.getElementById("leader-name").textContent;
      return name !== "none" && name !== old;
    },
    shown,
    { timeout: 30000 },
  );
  const successor = await page.textContent("#leader-name");
  const stoppedRole = await page.getAttribute(`#members tr[data-member="${shown}"]`, "data-role");
  assert.equal(stoppedRole, "down", "the stopped member is shown down");
  let reported;
  for (const until = deadline(20); reported !== successor; ) {
    assert.ok(Date.now() < until, `etcdctl reports ${reported}, the page ${successor}`);
    try { reported = clusterLeader(); } catch { await sleep(300); }
  }
  const changes = await page.textContent("#changes");
  assert.ok(changes.includes(`${shown} → `), `the change is listed: ${changes}`);
  await sleep(1500);
  await page.screenshot({ path: resolve(artifacts, "dashboard-after.png"), fullPage: true });
  console.log(`new leader ${successor} shown; screenshots in ${artifacts}`);

  // Restart it from the page: it comes back as a follower.
  await page.click(`#members tr[data-member="${shown}"] button[data-action="restart"]`);
  await page.waitForFunction(
    (name) => document.querySelector(`#members tr[data-member="${name}"]`)?.dataset.role === "follower",
    shown,
    { timeout: 30000 },
  );
  console.log(`${shown} restarted from the page and follows`);

  // Isolate the leader from the page: nothing reaches it over the peer links, it steps
  // down, and the others elect a new leader; healed, it follows again.
  const isolated = await page.textContent("#leader-name");
  await page.click(`#members tr[data-member="${isolated}"] button[data-action="isolate"]`);
  await page.waitForFunction(
    (old) => {
      const name = document.getElementById("leader-name").textContent;
      return name !== "none" && name !== old;
    },
    isolated,
    { timeout: 30000 },
  );
  console.log(`${isolated} isolated from the page; ${await page.textContent("#leader-name")} leads`);
  await page.screenshot({ path: resolve(artifacts, "dashboard-isolated.png"), fullPage: true });
  await page.click(`#members tr[data-member="${isolated}"] button[data-action="heal"]`);
  await page.waitForFunction(
    (name) => document.querySelector(`#members tr[data-member="${name}"]`)?.dataset.role === "follower",
    isolated,
    { timeout: 30000 },
  );
  console.log(`${isolated} healed and follows`);
  // A split at a key that looks like markup: the range map shows the key as text.
  const markup = "<i>m</i>";
  execFileSync(binary, ["ranges", "split", markup, "--endpoint", "127.0.0.1:2379"], { stdio: "ignore" });
  await page.waitForFunction(() => document.querySelectorAll("#ranges tbody tr").length === 2, null, { timeout: 30000 });
  const cells = await page.$$eval("#ranges tbody tr td:nth-child(3)", tds => tds.map(td => td.textContent));
  assert.ok(cells.includes(JSON.stringify(markup)), `the split key is shown as text: ${cells}`);
  assert.equal(await page.locator("#ranges i").count(), 0, "no markup from a key reaches the page");
  console.log("dashboard browser test passed");
} finally {
  if (browser) await browser.close();
  if (load) load.kill("SIGTERM");
  playground.kill("SIGTERM");
  await new Promise((done) => {
    const timer = setTimeout(() => { playground.kill("SIGKILL"); done(); }, 15000);
    playground.on("exit", () => { clearTimeout(timer); done(); });
  });
}

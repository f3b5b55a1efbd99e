// Unit tests of the client's configuration and token decoding (node --test; run by apps_test.go).
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { configFromEnv, claimsOf, scopeOf, parseDuration } = require("./client.js");

test("configFromEnv", async (t) => {
  const cases = [
    {
      name: "defaults",
      env: {},
      want: { mode: "once", clientId: "", scope: "https://management.azure.com/.default", intervalMs: 1000, attemptTimeoutMs: 60000,
        rawUrl: "http://169.254.169.254/metadata/identity/oauth2/token", query: "api-version=2018-02-01&resource=https://management.azure.com" },
    },
    {
      name: "user-assigned identity, resource without .default, fast retries",
      env: { MODE: "until-ok", AZURE_CLIENT_ID: "c1", TOKEN_RESOURCE: "https://vault.azure.net/", INTERVAL: "250ms" },
      want: { mode: "until-ok", clientId: "c1", scope: "https://vault.azure.net/.default", intervalMs: 250, attemptTimeoutMs: 60000,
        rawUrl: "http://169.254.169.254/metadata/identity/oauth2/token", query: "api-version=2018-02-01&resource=https://vault.azure.net&client_id=c1" },
    },
    {
      name: "raw mode keeps the query as given",
      env: { MODE: "raw-imds", QUERY: "resource=x&client_id=y", RAW_URL: "http://10.0.0.1/t", ATTEMPT_TIMEOUT: "1.5s" },
      want: { mode: "raw-imds", clientId: "", scope: "https://management.azure.com/.default", intervalMs: 1000, attemptTimeoutMs: 1500,
        rawUrl: "http://10.0.0.1/t", query: "resource=x&client_id=y" },
    },
  ];
  for (const c of cases) {
    await t.test(c.name, () => assert.deepEqual(configFromEnv(c.env), c.want));
  }
  for (const [env, msg] of [
    [{ MODE: "sometimes" }, /MODE="sometimes"/],
    [{ INTERVAL: "1" }, /INTERVAL="1"/],
    [{ ATTEMPT_TIMEOUT: "-1s" }, /ATTEMPT_TIMEOUT="-1s"/],
  ]) {
    await t.test(`refuses ${JSON.stringify(env)}`, () => assert.throws(() => configFromEnv(env), msg));
  }
});

test("scopeOf and parseDuration", () => {
  assert.equal(scopeOf("https://x/.default"), "https://x/.default");
  assert.equal(scopeOf("https://x"), "https://x/.default");
  assert.equal(parseDuration("I", "2m", 0), 120000);
  assert.equal(parseDuration("I", "", 7), 7);
});

test("claimsOf", () => {
  const payload = Buffer.from(JSON.stringify({ appid: "a1", exp: 5 })).toString("base64url");
  assert.deepEqual(claimsOf(`e30.${payload}.c2ln`), { appid: "a1", exp: 5 });
  assert.throws(() => claimsOf("opaque"), /not a JWT: 1 dot-separated parts/);
  assert.throws(() => claimsOf("a.bm90IGpzb24.c"), SyntaxError);
});

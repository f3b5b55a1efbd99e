// The end-to-end tests' JavaScript workload: the same contract as the Go client (../goclient), with
// @azure/identity's ManagedIdentityCredential, which asks IMDS at 169.254.169.254; in a pod the IMDS redirect
// sends those requests to the podidentity sidecar. One JSON line per attempt on stdout.
//
// Environment: MODE (once | until-ok | forever | raw-imds, default once), AZURE_CLIENT_ID (a user-assigned
// identity; unset asks for the default identity), TOKEN_RESOURCE (default https://management.azure.com),
// INTERVAL (default 1s), ATTEMPT_TIMEOUT (default 1m), and for raw-imds RAW_URL and QUERY.
"use strict";

const http = require("node:http");

const MODES = ["once", "until-ok", "forever", "raw-imds"];
const DEFAULT_RAW_URL = "http://169.254.169.254/metadata/identity/oauth2/token";

// parseDuration accepts the Go duration forms the tests use: 250ms, 1s, 1.5s, 2m, 1h.
function parseDuration(name, value, fallback) {
  if (!value) return fallback;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(value);
  const ms = m ? Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]] : NaN;
  if (!(ms > 0)) throw new Error(`${name}=${JSON.stringify(value)}: give a positive duration such as 500ms or 2s`);
  return ms;
}

function scopeOf(resource) {
  if (!resource) return "https://management.azure.com/.default";
  if (resource.endsWith("/.default")) return resource;
  return resource.replace(/\/$/, "") + "/.default";
}

function configFromEnv(env) {
  const mode = env.MODE || "once";
  if (!MODES.includes(mode)) throw new Error(`MODE=${JSON.stringify(mode)}: use one of ${MODES.join(", ")}`);
  const scope = scopeOf(env.TOKEN_RESOURCE);
  const clientId = env.AZURE_CLIENT_ID || "";
  let query = env.QUERY;
  if (!query) {
    query = "api-version=2018-02-01&resource=" + scope.replace(/\/\.default$/, "");
    if (clientId) query += "&client_id=" + clientId;
  }
  return {
    mode,
    clientId,
    scope,
    intervalMs: parseDuration("INTERVAL", env.INTERVAL, 1000),
    attemptTimeoutMs: parseDuration("ATTEMPT_TIMEOUT", env.ATTEMPT_TIMEOUT, 60000),
    rawUrl: env.RAW_URL || DEFAULT_RAW_URL,
    query,
  };
}

// claimsOf decodes a JWT's payload without verifying it: the client reports what the token says.
function claimsOf(jwt) {
  const parts = jwt.split(".");
  if (parts.length !== 3) throw new Error(`token is not a JWT: ${parts.length} dot-separated parts, want 3`);
  return JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
}

function oneLine(s) {
  return String(s).split(/\s+/).filter(Boolean).join(" ");
}

function print(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function attempt(credential, cfg, n) {
  const start = Date.now();
  const line = { ok: false, sdk: "js", attempt: n };
  try {
    const tok = await credential.getToken(cfg.scope, { abortSignal: AbortSignal.timeout(cfg.attemptTimeoutMs) });
    if (!tok) throw new Error("getToken returned no token");
    line.claims = claimsOf(tok.token);
    line.expiresOn = new Date(tok.expiresOnTimestamp).toISOString().replace(/\.\d{3}Z$/, "Z");
    line.ok = true;
  } catch (err) {
    delete line.claims;
    line.error = oneLine(err && err.message ? err.message : err);
  }
  const end = Date.now();
  line.elapsedMs = end - start;
  line.time = new Date(end).toISOString();
  return line;
}

function raw(cfg) {
  const start = Date.now();
  const line = { ok: false, sdk: "raw", attempt: 1 };
  const finish = () => {
    const end = Date.now();
    line.elapsedMs = end - start;
    line.time = new Date(end).toISOString();
    return line;
  };
  const url = cfg.rawUrl + (cfg.query ? "?" + cfg.query : "");
  return new Promise((resolve) => {
    const req = http.get(url, { headers: { Metadata: "true" }, timeout: cfg.attemptTimeoutMs }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => {
        line.status = res.statusCode;
        line.body = body.trim();
        line.ok = res.statusCode === 200;
        if (line.ok) {
          try {
            line.claims = claimsOf(JSON.parse(body).access_token);
          } catch (_) {
            // the status and body say enough
          }
        }
        resolve(finish());
      });
    });
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", (err) => {
      line.error = oneLine(err.message);
      resolve(finish());
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  let cfg;
  try {
    cfg = configFromEnv(process.env);
  } catch (err) {
    process.stderr.write(`jsclient: ${err.message}\n`);
    return 2;
  }
  if (cfg.mode === "raw-imds") {
    const line = await raw(cfg);
    print(line);
    return line.status ? 0 : 1;
  }
  const { ManagedIdentityCredential } = require("@azure/identity");
  const credential = cfg.clientId ? new ManagedIdentityCredential({ clientId: cfg.clientId }) : new ManagedIdentityCredential();
  for (let n = 1; ; n++) {
    const line = await attempt(credential, cfg, n);
    print(line);
    if (cfg.mode === "once") return line.ok ? 0 : 1;
    if (cfg.mode === "until-ok" && line.ok) {
      setInterval(() => {}, 1 << 30); // keep the pod Running with its log until SIGTERM
      return null;
    }
    await sleep(cfg.intervalMs);
  }
}

// Stopping (pod deletion) is not a failure.
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));

if (require.main === module) {
  // Exit explicitly: the SDK's keep-alive sockets would otherwise hold the process open. Writes to a pipe
  // are synchronous on Linux, so every line is out by then.
  main().then((code) => {
    if (code !== null) process.exit(code);
  });
}

module.exports = { configFromEnv, claimsOf, scopeOf, parseDuration };

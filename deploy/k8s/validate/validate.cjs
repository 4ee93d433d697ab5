#!/usr/bin/env node
// Schema validation of rendered Kubernetes manifests (multi-document YAML, e.g. `kubectl kustomize`).
//
//   node validate.cjs [--modules DIR] FILE...     validate every object of every FILE
//   node validate.cjs [--modules DIR] --self-test check that broken objects are rejected
//
// DIR is the node_modules directory holding the packages of package.json (scripts/check-k8s.sh
// installs them into its cache with `npm ci`); default: ./node_modules beside this file.
//
// Every object is looked up by apiVersion + kind among the models of kubernetes-models (the core
// Kubernetes API), @kubernetes-models/keda and @kubernetes-models/prometheus-operator, and validated
// against that JSON schema. An object whose apiVersion/kind has no schema FAILS.
//
// Those schemas do not forbid unknown fields (the API server does: strict field validation), so a
// misspelt field would pass. To catch that, each object is wrapped in Proxies that record which keys
// the schema validator looks at: a compiled validator reads every property its schema declares and
// enumerates the keys of maps (labels, data, ...). A key that it never reads in an object whose other
// properties it did read is a field the schema does not have, and FAILS. An object whose keys are
// never read at all has a free-form schema (no declared properties) and is accepted.
'use strict';

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

function parseArgs(argv) {
  const out = { modules: path.join(__dirname, 'node_modules'), files: [], selfTest: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--modules') out.modules = argv[++i];
    else if (a === '--self-test') out.selfTest = true;
    else if (a.startsWith('-')) throw new Error(`unknown option ${a}`);
    else out.files.push(a);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const req = createRequire(path.join(path.resolve(args.modules), '_'));
const YAML = req('yaml');

// --- schema registry --------------------------------------------------------------------------

// The models call `runValidateFunc(fn, this)` of @kubernetes-models/validate (through a getter on the
// package index that reads dist/validate.js's exports at call time). Swapping that export lets us
// capture each model's compiled validator `fn` and run it on our own (proxied) data.
const validateIndex = req.resolve('@kubernetes-models/validate');
const validateImpl = require(path.join(path.dirname(validateIndex), 'validate.js'));
const originalRun = validateImpl.runValidateFunc;
let captured = null;
validateImpl.runValidateFunc = (fn) => {
  captured = fn;
};

function modelIndexes(pkgName) {
  const root = path.dirname(req.resolve(`${pkgName}/package.json`));
  const found = [];
  for (const group of fs.readdirSync(root, { withFileTypes: true })) {
    if (!group.isDirectory() || group.name.startsWith('_') || group.name === 'node_modules') continue;
    const gdir = path.join(root, group.name);
    if (fs.existsSync(path.join(gdir, 'index.js')) && /^v\d/.test(group.name)) {
      found.push(path.join(gdir, 'index.js')); // core group: v1/
    }
    for (const ver of fs.readdirSync(gdir, { withFileTypes: true })) {
      const idx = path.join(gdir, ver.name, 'index.js');
      if (ver.isDirectory() && /^v\d/.test(ver.name) && fs.existsSync(idx)) found.push(idx);
    }
  }
  return found;
}

const PACKAGES = ['kubernetes-models', '@kubernetes-models/keda', '@kubernetes-models/prometheus-operator'];
const registry = new Map(); // "apiVersion/kind" -> { model, fn }

for (const pkg of PACKAGES) {
  const indexes = modelIndexes(pkg);
  if (indexes.length === 0) throw new Error(`${pkg}: no model modules found`);
  for (const idx of indexes) {
    const mod = require(idx);
    for (const value of Object.values(mod)) {
      if (typeof value !== 'function' || !value.apiVersion || !value.kind) continue;
      const key = `${value.apiVersion}/${value.kind}`;
      if (!registry.has(key)) registry.set(key, { model: value, fn: null, pkg });
    }
  }
}
for (const key of ['v1/Pod', 'apps/v1/Deployment', 'keda.sh/v1alpha1/ScaledObject',
  'monitoring.coreos.com/v1/ServiceMonitor', 'monitoring.coreos.com/v1/PrometheusRule']) {
  if (!registry.has(key)) throw new Error(`schema registry lacks ${key}`);
}

function validatorFor(key) {
  const entry = registry.get(key);
  if (!entry) return null;
  if (!entry.fn) {
    captured = null;
    new entry.model({}).validate();
    if (typeof captured !== 'function') throw new Error(`could not obtain the validator of ${key}`);
    entry.fn = captured;
  }
  return entry.fn;
}

// --- unknown-field detection ------------------------------------------------------------------

function track(value, pointer, records) {
  if (Array.isArray(value)) return value.map((v, i) => track(v, `${pointer}/${i}`, records));
  if (value === null || typeof value !== 'object') return value;
  const rec = { pointer, keys: Object.keys(value), read: new Set(), enumerated: false };
  records.push(rec);
  const target = {};
  for (const k of rec.keys) target[k] = track(value[k], `${pointer}/${escapePointer(k)}`, records);
  return new Proxy(target, {
    get(t, k, r) {
      if (typeof k === 'string') rec.read.add(k);
      return Reflect.get(t, k, r);
    },
    has(t, k) {
      if (typeof k === 'string') rec.read.add(k);
      return Reflect.has(t, k);
    },
    ownKeys(t) {
      rec.enumerated = true;
      return Reflect.ownKeys(t);
    },
  });
}

function escapePointer(k) {
  return k.replace(/~/g, '~0').replace(/\//g, '~1');
}

// --- validation -------------------------------------------------------------------------------

function describe(obj) {
  const md = (obj && obj.metadata) || {};
  const ns = md.namespace ? `${md.namespace}/` : '';
  return `${obj.kind || '?'} ${ns}${md.name || '?'}`;
}

function validateObject(obj) {
  const problems = [];
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    return ['document is not an object'];
  }
  if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') {
    return ['apiVersion and kind must be strings'];
  }
  if (!obj.metadata || typeof obj.metadata.name !== 'string' || obj.metadata.name === '') {
    problems.push('metadata.name is missing');
  }
  const key = `${obj.apiVersion}/${obj.kind}`;
  const fn = validatorFor(key);
  if (!fn) return [...problems, `no schema for apiVersion "${obj.apiVersion}" kind "${obj.kind}"`];

  // []byte fields are base64; the API server's decoder (Go encoding/base64) skips line breaks, and
  // kustomize folds long values over several lines, so compare them without the breaks.
  if (obj.apiVersion === 'v1' && (obj.kind === 'Secret' || obj.kind === 'ConfigMap')) {
    const field = obj.kind === 'Secret' ? 'data' : 'binaryData';
    if (obj[field] && typeof obj[field] === 'object') {
      obj = { ...obj, [field]: Object.fromEntries(Object.entries(obj[field]).map(
        ([k, v]) => [k, typeof v === 'string' ? v.replace(/[\r\n]/g, '') : v])) };
    }
  }

  const records = [];
  const proxied = track(obj, '', records);
  try {
    originalRun(fn, proxied);
  } catch (err) {
    problems.push(`schema: ${err.message}`);
  }
  for (const rec of records) {
    if (process.env.VALIDATE_DEBUG && !rec.enumerated && rec.read.size === 0 && rec.keys.length) {
      console.log(`  (free-form, not checked for unknown fields: ${describe(obj)} ${rec.pointer || '/'})`);
    }
    if (rec.enumerated || rec.read.size === 0) continue;
    for (const k of rec.keys) {
      if (!rec.read.has(k)) problems.push(`unknown field ${rec.pointer}/${escapePointer(k)}`);
    }
  }
  return problems;
}

function loadDocuments(text, source) {
  // YAML 1.1, as the Kubernetes decoders read it (yes/no/on/off are booleans there).
  const docs = YAML.parseAllDocuments(text, { version: '1.1', uniqueKeys: true, prettyErrors: true });
  const out = [];
  docs.forEach((doc, i) => {
    if (doc.errors.length) {
      throw new Error(`${source}: document ${i + 1}: ${doc.errors.map((e) => e.message).join('; ')}`);
    }
    const value = doc.toJS({ maxAliasCount: 100 });
    if (value !== null && value !== undefined) out.push(value);
  });
  return out;
}

function validateText(text, source) {
  const objects = loadDocuments(text, source);
  const failures = [];
  const kinds = new Map();
  const seen = new Set();
  for (const obj of objects) {
    const problems = validateObject(obj);
    if (obj && obj.metadata) {
      const id = `${obj.apiVersion}/${obj.kind}/${obj.metadata.namespace || ''}/${obj.metadata.name}`;
      if (seen.has(id)) problems.push('duplicate object (same apiVersion, kind, namespace, name)');
      seen.add(id);
    }
    if (problems.length) failures.push({ what: describe(obj), problems });
    const k = (obj && obj.kind) || '?';
    kinds.set(k, (kinds.get(k) || 0) + 1);
  }
  return { count: objects.length, kinds, failures };
}

// --- self-test --------------------------------------------------------------------------------

const GOOD_DEPLOYMENT = {
  apiVersion: 'apps/v1',
  kind: 'Deployment',
  metadata: { name: 'ok', labels: { a: 'b' } },
  spec: {
    replicas: 2,
    selector: { matchLabels: { a: 'b' } },
    template: {
      metadata: { labels: { a: 'b' } },
      spec: { containers: [{ name: 'c', image: 'i:1', ports: [{ name: 'ops', containerPort: 9090 }] }] },
    },
  },
};

function mutate(base, fn) {
  const copy = JSON.parse(JSON.stringify(base));
  fn(copy);
  return copy;
}

function selfTest() {
  const cases = [
    ['valid Deployment', GOOD_DEPLOYMENT, true],
    ['replicas: "two"', mutate(GOOD_DEPLOYMENT, (d) => { d.spec.replicas = 'two'; }), false],
    ['unknown field in a container', mutate(GOOD_DEPLOYMENT, (d) => {
      d.spec.template.spec.containers[0].imagePullPolicyy = 'Always';
    }), false],
    ['unknown top-level spec field', mutate(GOOD_DEPLOYMENT, (d) => { d.spec.replica = 2; }), false],
    ['missing required selector', mutate(GOOD_DEPLOYMENT, (d) => { delete d.spec.selector; }), false],
    ['unknown kind', { apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }, false],
    ['ScaledObject with a misspelt field', {
      apiVersion: 'keda.sh/v1alpha1', kind: 'ScaledObject', metadata: { name: 's' },
      spec: { scaleTargetRef: { name: 'd' }, minReplicaCount: 1, trigers: [] },
    }, false],
    ['ServiceMonitor endpoints not a list', {
      apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor', metadata: { name: 'm' },
      spec: { selector: {}, endpoints: { port: 'ops' } },
    }, false],
    ['ConfigMap with arbitrary data keys', {
      apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c' }, data: { ANY_KEY: 'x' },
    }, true],
  ];
  let bad = 0;
  for (const [name, obj, shouldPass] of cases) {
    const problems = validateObject(obj);
    const passed = problems.length === 0;
    const ok = passed === shouldPass;
    if (!ok) bad++;
    console.log(`  ${ok ? 'ok  ' : 'FAIL'} ${name}: ${passed ? 'accepted' : `rejected (${problems[0]})`}`);
  }
  return bad;
}

// --- main -------------------------------------------------------------------------------------

function main() {
  if (args.selfTest) {
    const bad = selfTest();
    console.log(`self-test: ${bad === 0 ? 'validator rejects broken objects' : `${bad} case(s) wrong`}`);
    return bad === 0 ? 0 : 1;
  }
  if (args.files.length === 0) {
    console.error('usage: validate.cjs [--modules DIR] FILE... | --self-test');
    return 2;
  }
  let failed = 0;
  for (const file of args.files) {
    const text = fs.readFileSync(file, 'utf8');
    let result;
    try {
      result = validateText(text, file);
    } catch (err) {
      console.log(`${file}: FAIL ${err.message}`);
      failed++;
      continue;
    }
    const kinds = [...result.kinds.entries()].sort().map(([k, n]) => `${k} ${n}`).join(', ');
    if (result.failures.length === 0) {
      console.log(`${file}: ${result.count} objects valid (${kinds})`);
    } else {
      console.log(`${file}: ${result.failures.length} of ${result.count} objects INVALID`);
      for (const f of result.failures) {
        for (const p of f.problems) console.log(`  ${f.what}: ${p}`);
      }
      failed++;
    }
    if (result.count === 0) {
      console.log(`${file}: FAIL no objects`);
      failed++;
    }
  }
  return failed === 0 ? 0 : 1;
}

process.exitCode = main();

// The TypeScript declarations compile and describe the API as used.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const options = ['--noEmit', '--strict', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--skipLibCheck'];

function compile(file) {
  try {
    execFileSync(process.execPath, [tsc, ...options, file], { cwd: join(here, '..'), stdio: 'pipe' });
    return '';
  } catch (e) {
    return `${e.stdout}${e.stderr}`;
  }
}

test('herald.d.ts type-checks a full use of the client', () => {
  assert.equal(compile(join(here, 'usage.ts')), '');
});

test('herald.d.ts rejects a misuse', () => {
  const dir = mkdtempSync(join(here, '.tmp-'));
  try {
    const bad = join(dir, 'bad.ts');
    writeFileSync(bad, "import { HeraldClient } from '../../herald.js';\nnew HeraldClient({ url: 'x' }).subscribe({ bindings: [{ exchange: 'a' }] });\n");
    assert.match(compile(bad), /pattern/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// Headless Chromium (Debian's package) driven by playwright-core.

import { chromium } from 'playwright-core';
import { existsSync } from 'node:fs';

/** The Chromium binary: $CHROMIUM or Debian's. */
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Launches Chromium headless; the flags keep it from reaching for the network. */
export async function launch() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} does not exist: apt-get install chromium, or set CHROMIUM`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
}

/** Fails the test with the page's own errors, which would otherwise be lost. */
export function watchPage(page, errors) {
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    // Chromium logs every failed or cut WebSocket itself; the tests cut them on purpose.
    if (m.type() === 'error' && !/WebSocket/.test(m.text())) errors.push(`console: ${m.text()}`);
  });
}

// Unit tests only: web/e2e holds the browser tests (node --test, a real server).
export default { test: { include: ["test/**/*.test.ts"] } };

import { defineConfig } from "vite";

// `npm run dev` proxies the API to a Parley server on :8080, so the app and
// the API share an origin as they do when the Go server serves the build.
const api = process.env.PARLEY_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  server: {
    proxy: {
      "^/(parley\\.v1\\.|media/|avatars/)": { target: api, changeOrigin: true },
    },
  },
  build: { outDir: "dist", emptyOutDir: true },
});

// A site owner's page on ANOTHER origin than the API, with one of three
// players reading an ended VOD's comments from the API (CORS). It records
// when each comment's element appears (the media's currentTime) for the test.
const params = new URLSearchParams(location.search);
const api = params.get("api");
const vod = params.get("vod");
const kind = params.get("kind");
const token = params.get("token");
const container = document.getElementById("player");

window.__seen = [];
const seenTexts = new Set();
let media = null;
new MutationObserver((records) => {
  for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.nodeType !== 1) continue;
      const text = node.textContent;
      if (!text || !(text.startsWith("c") || text.startsWith("<")) || seenTexts.has(text)) continue;
      if (node.children.length > 1) continue;
      seenTexts.add(text);
      window.__seen.push({ text, t: media ? media.currentTime : -1, color: getComputedStyle(node).color });
    }
  }
}).observe(container, { childList: true, subtree: true });

/** Bilibili XML into ArtPlayer's items, colors zero-padded to #rrggbb. */
async function bilibiliLoader() {
  const response = await fetch(`${api}/v1/vods/${vod}/bilibili.xml`);
  const xml = new DOMParser().parseFromString(await response.text(), "text/xml");
  return [...xml.getElementsByTagName("d")].map((d) => {
    const p = d.getAttribute("p").split(",");
    const mode = Number(p[1]);
    return {
      text: d.textContent,
      time: Number(p[0]),
      mode: mode === 5 ? 1 : mode === 4 ? 2 : 0,
      color: "#" + Number(p[3]).toString(16).padStart(6, "0"),
    };
  });
}

if (kind === "dplayer") {
  const dp = new window.DPlayer({
    container,
    video: { url: "/silence.wav" },
    danmaku: { id: vod, api: `${api}/dplayer/`, token, user: "dplayer-user", maximum: 1000 },
    volume: 0,
    autoplay: true,
  });
  media = dp.video;
  dp.video.muted = true;
  window.__send = (text) =>
    new Promise((resolve) => dp.danmaku.send({ text, color: "#ff0000", type: "right" }, () => resolve(true)));
  dp.on("canplay", () => dp.play());
} else if (kind === "artplayer") {
  const art = new window.Artplayer({
    container,
    url: "/silence.wav",
    muted: true,
    autoplay: true,
    plugins: [window.artplayerPluginDanmuku({ danmuku: bilibiliLoader, speed: 5, synchronousPlayback: false })],
  });
  media = art.video;
  art.on("ready", () => {
    window.__loaded = true;
    art.play();
  });
} else if (kind === "danmaku") {
  const video = document.createElement("video");
  video.src = "/silence.wav";
  video.muted = true;
  video.style.width = "100%";
  video.style.height = "100%";
  container.appendChild(video);
  media = video;
  const response = await fetch(`${api}/v1/vods/${vod}/segments/0`);
  const { items } = await response.json();
  const modes = { scroll: "rtl", top: "top", bottom: "bottom" };
  const comments = items.map((item) => ({
    text: item.text,
    time: item.offset_ms / 1000,
    mode: modes[item.mode] ?? "rtl",
    style: { fontSize: "20px", color: "#" + item.color.toString(16).padStart(6, "0") },
  }));
  new window.Danmaku({ container, media: video, comments, engine: "dom" });
  window.__loaded = true;
  await video.play();
}

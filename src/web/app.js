const stage = document.getElementById('stage'), log = document.getElementById('log'), status = document.getElementById('status');
let ws, token, cursor = null, ref = 0, lane = 0;
function show(item) {
  const el = document.createElement('div');
  el.className = 'dm';
  el.textContent = item.text;               // textContent: never HTML
  el.style.color = '#' + item.color.toString(16).padStart(6, '0');
  el.style.top = (lane++ % 10) * 10 + '%';
  stage.appendChild(el);
  const w = stage.clientWidth;
  el.animate([{transform: `translateX(${w}px)`}, {transform: `translateX(-${el.clientWidth + 20}px)`}], {duration: 8000})
    .onfinish = () => el.remove();
  const line = document.createElement('div');
  line.textContent = `${new Date(item.ts).toLocaleTimeString()} ${item.user}: ${item.text}`;
  log.prepend(line);
}
async function guest() {
  if (token) return token;
  const r = await fetch('/v1/auth/guest', {method: 'POST'});
  if (r.ok) token = (await r.json()).token;
  return token;
}
async function join() {
  if (ws) ws.close();
  const room = document.getElementById('room').value;
  await guest();
  const q = new URLSearchParams();
  if (cursor) q.set('cursor', cursor);
  if (token) q.set('token', token);
  ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/rooms/${encodeURIComponent(room)}/ws?${q}`);
  ws.onopen = () => status.textContent = 'connected';
  ws.onclose = () => { status.textContent = 'reconnecting…'; setTimeout(join, 1000); };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === 'hello' || m.type === 'gap') cursor = m.cursor;
    if (m.type === 'batch') { cursor = m.cursor; m.items.forEach(show); }
    if (m.type === 'error') status.textContent = m.error.code + ': ' + m.error.message;
  };
}
document.getElementById('join').onclick = () => { cursor = null; join(); };
document.getElementById('f').onsubmit = (e) => {
  e.preventDefault();
  const t = document.getElementById('text');
  const color = parseInt(document.getElementById('color').value.slice(1), 16);
  if (ws && ws.readyState === 1 && t.value) ws.send(JSON.stringify({type: 'send', ref: ++ref, text: t.value, color}));
  t.value = '';
};
join();

# takeover-herd.py BIN LABEL: a power cut of the local cluster (`just cluster`, data in
# data/cluster): SIGKILL every control and node by its pid file, start the cluster
# again with BIN (on core 1), and time, from the nodes' logs, until each node logged
# "owning the room" for as many rooms as the catalog gives it; also counts failed first
# takeovers and isolations. Prints one JSON line per run (docs/BENCHMARKS.md, "Restarting
# 50,000 rooms").
import re,sys,subprocess,time,datetime,json,os
BIN,LABEL=sys.argv[1],sys.argv[2]
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import glob,signal
for pidfile in glob.glob('data/cluster/*.pid'):
    try: os.kill(int(open(pidfile).read().strip()), signal.SIGKILL)
    except (ValueError, OSError): pass
time.sleep(1)
sizes={n:os.path.getsize(f'data/cluster/{n}/node.log') for n in ['n1','n2','n3']}
t0=time.time()
subprocess.run(f'taskset -c 1 env DISTRICHAT_BIN={BIN} bash cluster/up.sh',shell=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
def since(n):
    with open(f'data/cluster/{n}/node.log',errors='replace') as f:
        f.seek(sizes[n]); return [re.sub(r'\x1b\[[0-9;]*m','',l) for l in f]
def ts(l):
    m=re.search(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z',l); return datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp() if m else None
owned=None
while time.time()-t0<240:
    try:
        st=json.loads(subprocess.run([BIN,'status','--json'],capture_output=True,text=True).stdout); owned={x['name']:x['rooms_owned'] for x in st['nodes']}
    except Exception: time.sleep(1); continue
    logs={n:since(n) for n in owned}
    counts={n:sum('owning the room' in l for l in logs[n]) for n in owned}
    if all(counts[n]>=owned[n] for n in owned): break
    time.sleep(1)
res={}
for n in owned:
    own=[ts(l) for l in logs[n] if 'owning the room' in l]; fails=sum('cannot take ownership' in l for l in logs[n])
    iso=sum('no leader answered' in l for l in logs[n])
    res[n]=dict(owned=owned[n],ready=counts[n],last_ready_s=round(max(own)-t0,1) if own else None,first_try_failures=fails,isolations=iso)
print(LABEL, json.dumps(res))

#!/usr/bin/env python3
"""Counts import circles between the modules of src/: a module is a file
(mod.rs and lib.rs name their folder); an edge is a `crate::`, `super::` or
`self::` path in its non-test code (comments left out) that names another
module, not an ancestor. Prints each strongly connected component of more
than one module, then their number (issue 32 asks for 0).

Usage: scripts/import_circles.py   (from the repository root)
"""
import re, os, sys
root='src'
mods={}
for dp,dn,fn in os.walk(root):
    for f in fn:
        if f.endswith('.rs'):
            p=os.path.join(dp,f)
            rel=p[len(root)+1:-3]
            parts=rel.split('/')
            if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
            if 'tests' in parts[-1:]: continue
            mods['::'.join(parts)]=p
def resolve(cur, path):
    # path like crate::a::b::c or super::x
    segs=path.split('::')
    if segs[0]=='crate': base=[]; segs=segs[1:]
    elif segs[0]=='super':
        base=cur.split('::') if cur else []
        while segs and segs[0]=='super':
            base=base[:-1]; segs=segs[1:]
    elif segs[0]=='self':
        base=cur.split('::') if cur else []; segs=segs[1:]
    else: return None
    best=None
    for i in range(len(segs),-1,-1):
        cand='::'.join(base+segs[:i])
        if cand in mods: best=cand; break
    return best
edges={}
for m,p in mods.items():
    src=open(p).read()
    # strip test modules
    src=re.split(r'#\[cfg\(test\)\]\s*mod tests', src)[0]
    src="\n".join(l for l in src.split("\n") if not l.strip().startswith("//"))
    deps=set()
    cur=m
    # file that is mod.rs: super refers to parent of module; for a.rs same
    for mt in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)', src):
        r=resolve(cur, mt.group(1))
        if r is not None and r!=m and not m.startswith(r+'::') and r!='':
            deps.add(r)
    # use super::{a, b}
    for mt in re.finditer(r'\buse\s+(crate|super)((?:::\w+)*)::\{([^}]*)\}', src):
        for item in mt.group(3).split(','):
            item=item.strip().split(' ')[0]
            if not item or item=='self': continue
            r=resolve(cur, mt.group(1)+mt.group(2)+'::'+item)
            if r is not None and r!=m and not m.startswith(r+'::') and r!='':
                deps.add(r)
    edges[m]=deps
# tarjan
sys.setrecursionlimit(10000)
index={}; low={}; st=[]; on=set(); sccs=[]; i=[0]
def strong(v):
    index[v]=low[v]=i[0]; i[0]+=1; st.append(v); on.add(v)
    for w in edges.get(v,()):
        if w not in index: strong(w); low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],index[w])
    if low[v]==index[v]:
        comp=[]
        while True:
            w=st.pop(); on.discard(w); comp.append(w)
            if w==v: break
        if len(comp)>1: sccs.append(sorted(comp))
for v in list(edges):
    if v not in index: strong(v)
for c in sccs: print(len(c), c)
print('circles (SCCs > 1):', len(sccs))

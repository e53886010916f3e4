"""Would Platt scaling make the shipped risk better calibrated? (docs/detector.md, limit 3: not shipped.)

    python docs/experiments/platt_calibration.py      # about 30 s

Fits risk' = sigmoid(a * logit(risk) + b) on the tuning split's out-of-fold logits (each recipe's rows scored by
the model fitted without it, the rows and targets `stability eval --fit` uses), then prints the Brier score and the
reliability bins of the shipped risk and of the rescaled one on the tuning, held-out and fresh splits, and where the
shipped threshold lands. A monotone rescaling moves no alert, only the number the dashboard shows.
"""
import numpy as np
from stability.commands.eval import default_zoo, default_suite
from stability.evaluation import benchmark as B
from stability.evaluation.buildup import BUILD_UP
from stability.detector.online import shipped_model
from stability.detector.evidence import FEATURES
H=50
runs=B.load_runs(default_zoo(), default_suite())
cases,kinds=B.prepare_cases(runs,H)
evid={c.series.name:B.evidence_matrix(c.series) for c in cases}
ign_fit=B._ignore(cases,kinds,{BUILD_UP,'sudden'})
tune=[c for c in cases if c.series.meta.get('split')=='tune']
rec=lambda c:c.series.meta.get('recipe') or ''
def logit_of(m,X):
    w=np.array([m.weights.get(k,0.0) for k in FEATURES]); return m.intercept+X@w
Z,Y=[],[]
for r in sorted({rec(c) for c in tune}):
    m=B.fit_model(B.fitted_on([c for c in tune if rec(c)!=r]),evid,ign_fit,H)
    for c in B.fitted_on([c for c in tune if rec(c)==r]):
        X,crit,_=evid[c.series.name]; use,y=B.targets(c,H,ign_fit[c.series.name]); use&=~crit
        Z.append(logit_of(m,X)[use]); Y.append(y[use])
Z=np.concatenate(Z); Y=np.concatenate(Y)
# Platt: fit a, b by Newton
a,b=1.0,0.0
for _ in range(100):
    p=1/(1+np.exp(-(a*Z+b))); g=np.array([np.sum((p-Y)*Z),np.sum(p-Y)])
    W=p*(1-p); Hm=np.array([[np.sum(W*Z*Z),np.sum(W*Z)],[np.sum(W*Z),np.sum(W)]])
    step=np.linalg.solve(Hm,g); a-=step[0]; b-=step[1]
print('platt a,b',a,b, 'rows',len(Y))
sm=shipped_model()
def rel(cs, f):
    P,YY=[],[]
    for c in cs:
        X,crit,_=evid[c.series.name]; use,y=B.targets(c,H,ign_fit[c.series.name]); use&=~crit
        P.append(f(logit_of(sm,X))[use]); YY.append(y[use])
    P=np.concatenate(P); YY=np.concatenate(YY)
    out=[]
    for lo,hi in zip(B.RELIABILITY_BINS[:-1],B.RELIABILITY_BINS[1:]):
        mm=(P>=lo)&((P<hi) if hi<1 else (P<=hi))
        out.append((lo,hi,int(mm.sum()),round(float(P[mm].mean()),3) if mm.any() else None,round(float(YY[mm].mean()),3) if mm.any() else None))
    return round(float(np.mean((P-YY)**2)),5), out
sig=lambda z:1/(1+np.exp(-z))
for sp in ('tune','heldout','fresh'):
    cs=[c for c in cases if c.series.meta.get('split')==sp]
    print(sp,'raw',rel(cs,sig))
    print(sp,'platt',rel(cs,lambda z:sig(a*z+b)))
thr=0.967587; z=np.log(thr/(1-thr)); print('threshold ->', sig(a*z+b))

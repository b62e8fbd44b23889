import sys, torch
from transformers import AutoModel, AutoTokenizer
from textdiff.data.tasks import get_task
from textdiff.data import SFTCollator
from textdiff.samplers.generate import generate
from textdiff.samplers.text import decode_completion
from textdiff.rl.rewards import countdown_partial_reward
ck=sys.argv[1]; model=AutoModel.from_pretrained(ck).eval(); tok=AutoTokenizer.from_pretrained(ck)
task = get_task("countdown", n_numbers=3, min_number=1, max_number=20, max_target=100, ops=["+","-"], prompt_template="Make {target} from {numbers} with {ops}:")
enc=SFTCollator(tok,max_length=64); test=task.generate(100,"test",0)
E=[enc.encode_prompt(p.prompt) for p in test]; W=max(map(len,E))
ids=torch.zeros(len(test),W,dtype=torch.long); m=torch.zeros_like(ids)
for r,e in enumerate(E): ids[r,W-len(e):]=torch.tensor(e); m[r,W-len(e):]=1
with torch.no_grad(): out=generate(model,ids,attention_mask=m,gen_length=16,steps=16,block_length=16)
cs=[decode_completion(tok,row,model.config.mask_token_id) for row in out.sequences[:,W:].tolist()]
r=countdown_partial_reward(cs,[p.meta['numbers'] for p in test],[p.meta['target'] for p in test])
import collections; print(collections.Counter(r))
for p,c in list(zip(test,cs))[:12]: print(p.prompt,'|',p.answer,'|',repr(c))

import sys, torch, time
from transformers import AutoModel, AutoTokenizer
from textdiff.data.tasks import get_task
from textdiff.data import SFTCollator
from textdiff.samplers.generate import generate
from textdiff.samplers.text import decode_completion
ck = sys.argv[1]
torch.manual_seed(0)
model = AutoModel.from_pretrained(ck).eval(); tok = AutoTokenizer.from_pretrained(ck)
task = get_task("countdown", n_numbers=3, min_number=1, max_number=20, max_target=100, ops=["+","-"], prompt_template="Make {target} from {numbers} with {ops}:")
enc = SFTCollator(tok, max_length=64)
def run(problems, temp, k):
    ok_any=[0]*len(problems); ok_sum=[0]*len(problems); nums=[0]*len(problems)
    for rep in range(k):
        for s in range(0,len(problems),100):
            ch=problems[s:s+100]; E=[enc.encode_prompt(p.prompt) for p in ch]; W=max(map(len,E))
            ids=torch.zeros(len(ch),W,dtype=torch.long); m=torch.zeros_like(ids)
            for r,e in enumerate(E): ids[r,W-len(e):]=torch.tensor(e); m[r,W-len(e):]=1
            with torch.no_grad(): out=generate(model,ids,attention_mask=m,gen_length=16,steps=16,block_length=16,temperature=temp)
            for i,row in enumerate(out.sequences[:,W:].tolist()):
                c=decode_completion(tok,row,model.config.mask_token_id); sc=task.score(ch[i],c)
                ok_any[s+i]|=sc==1.0; ok_sum[s+i]+=sc==1.0
    return sum(ok_sum)/len(problems)/k, sum(ok_any)/len(problems)
test=task.generate(266,"test",0)
train=task.generate(200,"train",0)
t=time.time()
print("test greedy", run(test,0.0,1))
pass
print("test temp1 mean/pass@8", run(test,1.0,8))
pass
print(time.time()-t)

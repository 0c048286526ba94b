import torch,time
from transformers import Qwen3Config as QC,Qwen3ForCausalLM as QM
from peft import LoraConfig,get_peft_model
torch.manual_seed(0);torch.set_default_dtype(torch.bfloat16)
c=QC(vocab_size=151936,hidden_size=2560,intermediate_size=9728,num_hidden_layers=36,num_attention_heads=32,num_key_value_heads=8,head_dim=128,tie_word_embeddings=True,eos_token_id=None,pad_token_id=0)
with torch.device('cuda'):m=QM(c).eval()
for q in m.parameters():q.data.normal_(0,0.02)
p=get_peft_model(m,LoraConfig(r=16,target_modules='all-linear')).eval()
def mk(bs,L=300):
  i=torch.randint(3,150000,(bs,L),device='cuda');a=torch.ones_like(i)
  for j in range(bs):a[j,:(j*37)%150]=0
  i[a==0]=0;return i,a
x=mk(64)
def g(M,t,N,**k):
  torch.cuda.synchronize();z=time.time()
  o=M.generate(input_ids=x[0],attention_mask=x[1],max_new_tokens=N,do_sample=False,**k)
  torch.cuda.synchronize();d=time.time()-z;print(f"{t} N={N}: {d:.2f}s",flush=True);return d
S=dict(cache_implementation='static')
a=g(p,'peft unmerged dyn',1);b=g(p,'peft unmerged dyn',64);print(' ms/step',1000*(b-a)/63)
p.merge_adapter();a=g(p,'peft merged dyn',1);b=g(p,'peft merged dyn',64);print(' ms/step',1000*(b-a)/63)
p.unmerge_adapter();q=p.merge_and_unload()
a=g(q,'plain dyn',1);b=g(q,'plain dyn',128);print(' ms/step',1000*(b-a)/127)
g(q,'plain static compile',128,**S);a=g(q,'plain static',1,**S);b=g(q,'plain static',128,**S);print(' ms/step',1000*(b-a)/127)
from torch.profiler import profile,ProfilerActivity as PA
with profile(activities=[PA.CUDA]) as pr:g(q,'plain static prof',32,**S)
print(pr.key_averages().table(sort_by='cuda_time_total',row_limit=12,max_name_column_width=60))

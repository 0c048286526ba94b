import torch,time,os,sys
from transformers import Qwen3Config,Qwen3ForCausalLM
from peft import LoraConfig,get_peft_model
from torch._dynamo.utils import counters
import transformers,peft
dev='cuda' if torch.cuda.is_available() else 'cpu'
print(torch.__version__,transformers.__version__,peft.__version__,dev)
torch.manual_seed(0)
c=Qwen3Config(vocab_size=512,hidden_size=256,intermediate_size=512,num_hidden_layers=4,num_attention_heads=4,num_key_value_heads=2,head_dim=64,max_position_embeddings=4096,eos_token_id=None,pad_token_id=0)
m=Qwen3ForCausalLM(c).to(dev,torch.bfloat16).eval()
p=get_peft_model(m,LoraConfig(r=8,lora_alpha=16,target_modules=['q_proj','v_proj','up_proj','down_proj'],init_lora_weights=False)).eval()
for n,q in p.named_parameters():
  if 'lora_B' in n: q.data.normal_(0,0.3)
W=p.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
W0=W.detach().clone()
def mk(bs,L,s):
  g=torch.Generator().manual_seed(s);ids=torch.randint(3,500,(bs,L),generator=g);am=torch.ones_like(ids)
  for i in range(bs): am[i,:(i*5)%17]=0
  ids[am==0]=0;return ids.to(dev),am.to(dev)
A=mk(8,64,1);B=mk(8,48,2);C=mk(5,64,3)
def g(x,tag,**k):
  torch.cuda.synchronize() if dev=='cuda' else 0;t=time.time()
  o=p.generate(input_ids=x[0],attention_mask=x[1],max_new_tokens=32,do_sample=False,**k)
  torch.cuda.synchronize() if dev=='cuda' else 0
  print(f"{tag}: {time.time()-t:.2f}s graphs={counters['stats']['unique_graphs']} ptr={W.data_ptr()%100000}",flush=True);return o[:,x[0].shape[1]:]
S=dict(cache_implementation='static')
lA=g(A,'lora static A',**S);g(A,'lora static A again',**S);g(B,'lora static B shorter',**S);g(C,'lora static C bs5',**S);g(A,'lora static A after C',**S)
lAd=g(A,'lora dynamic A')
print('static==dynamic lora',(lA==lAd).float().mean().item())
p.merge_adapter()
mA=g(A,'merged static A',**S);print('merged==lora',(mA==lA).float().mean().item())
p.unmerge_adapter();print('W drift after unmerge',(W.float()-W0.float()).abs().max().item())
with p.disable_adapter():
  bA=g(A,'base static A',**S);bAd=g(A,'base dynamic A')
print('base static==dyn',(bA==bAd).float().mean().item(),'base==lora',(bA==lA).float().mean().item())
lA2=g(A,'lora static A again2',**S);print('lora2==lora',(lA2==lA).float().mean().item())
p.merge_adapter(safe_merge=True)
sA=g(A,'safe-merged static A',**S);print('safemerged==lora',(sA==lA).float().mean().item())
p.unmerge_adapter()
with p.disable_adapter():
  b2=g(A,'base static A 2',**S)
print('base2==base',(b2==bA).float().mean().item())
print('graph_breaks',dict(counters['graph_break']))
from transformers import GenerationConfig,ContinuousBatchingConfig
ids,am=A;P=[r[m.bool()].tolist() for r,m in zip(ids.cpu(),am.cpu())]
t=time.time()
try:
  R=p.generate_batch(P,generation_config=GenerationConfig(do_sample=False,max_new_tokens=32,eos_token_id=-1,pad_token_id=0),continuous_batching_config=ContinuousBatchingConfig(block_size=32,num_blocks=64,max_batch_tokens=512))
  print('CB',time.time()-t,list(R)[:3],len(R))
  cb=[R[k].generated_tokens for k in R];ref=[lA[i].tolist() for i in range(8)]
  print('CB==lora static',sum(a==b for x,y in zip(cb,ref) for a,b in zip(x,y))/256,'rows exact',sum(x==y for x,y in zip(cb,ref)))
except Exception as e: print('CB fail',repr(e)[:300])

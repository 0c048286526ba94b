import torch,time,transformers as T,peft
from transformers import Qwen3Config as QC,Qwen3ForCausalLM as QM,GenerationConfig as GC,ContinuousBatchingConfig as CBC
from peft import LoraConfig,get_peft_model
from torch._dynamo.utils import counters as K
print(torch.__version__,T.__version__,peft.__version__)
torch.manual_seed(0)
c=QC(vocab_size=512,hidden_size=256,intermediate_size=512,num_hidden_layers=4,num_attention_heads=4,num_key_value_heads=2,head_dim=64,eos_token_id=None,pad_token_id=0)
m=QM(c).to('cuda',torch.bfloat16).eval()
p=get_peft_model(m,LoraConfig(r=8,target_modules=['q_proj','v_proj','up_proj','down_proj'],init_lora_weights=False)).eval()
for n,q in p.named_parameters():
  if 'lora_B' in n:q.data.normal_(0,0.3)
W=m.model.layers[0].self_attn.q_proj.base_layer.weight;W0=W.detach().clone()
def mk(b,L,s):
  g=torch.Generator().manual_seed(s);i=torch.randint(3,500,(b,L),generator=g);a=torch.ones_like(i)
  for j in range(b):a[j,:(j*5)%17]=0
  i[a==0]=0;return i.cuda(),a.cuda()
A=mk(8,64,1);B=mk(8,48,2);C=mk(5,64,3)
def g(x,t,s=1):
  torch.cuda.synchronize();z=time.time()
  o=p.generate(input_ids=x[0],attention_mask=x[1],max_new_tokens=32,do_sample=False,**({'cache_implementation':'static'} if s else {}))
  torch.cuda.synchronize();print(f"{t}: {time.time()-z:.2f}s graphs={K['stats']['unique_graphs']} ptr={W.data_ptr()%99991}",flush=True);return o[:,x[0].shape[1]:]
E=lambda a,b:round((a==b).float().mean().item(),3)
lA=g(A,'lora A');g(A,'lora A2');g(B,'lora B short');g(C,'lora C bs5');g(A,'lora A3')
lAd=g(A,'lora dyn',0);print('stat==dyn',E(lA,lAd))
p.merge_adapter();mA=g(A,'merged A')
p.unmerge_adapter();print('W drift',(W.float()-W0.float()).abs().max().item())
with p.disable_adapter():bA=g(A,'base A');bAd=g(A,'base dyn',0)
print('merged==lora',E(mA,lA),'merged==base',E(mA,bA),'base stat==dyn',E(bA,bAd),'base==lora',E(bA,lA))
l2=g(A,'lora A4');print('lora4==lora',E(l2,lA))
p.merge_adapter(safe_merge=True);sA=g(A,'safemerged A');print('safe==lora',E(sA,lA),'safe==base',E(sA,bA))
p.unmerge_adapter()
with p.disable_adapter():b2=g(A,'base A2')
print('base2==base',E(b2,bA),'gb',dict(K['graph_break']))
P=[r[q.bool()].tolist() for r,q in zip(*[t.cpu() for t in A])]
z=time.time()
try:
  R=p.generate_batch(P,generation_config=GC(do_sample=False,max_new_tokens=32,eos_token_id=-1,pad_token_id=0),continuous_batching_config=CBC(block_size=32,num_blocks=64,max_batch_tokens=512))
  cb=[R[k].generated_tokens for k in R];print('CB',time.time()-z,list(R)[:3],'==lora',E(torch.tensor(cb).cuda(),lA))
except Exception as e:print('CB fail',repr(e)[:300])

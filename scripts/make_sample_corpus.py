#!/usr/bin/env python3
"""Writes sample_corpus/: synthetic clinical notes (no real patient data), judged queries
and graded qrels in the BEIR layout. Deterministic (seeded); rerun to regenerate.

Each synthetic patient has a primary problem and chronic comorbidities; each gets 3-5 notes
of different types (ED note, H&P, progress note, discharge summary, consult, radiology,
pathology, operative note, nursing note, medication list). Because the generator knows what
each note is about, the relevance judgments follow from it:
  grade 2: the note is about the queried condition (or manages it as a comorbidity, as
           progress notes and discharge summaries do) / contains the exact drug, dose or code;
  grade 1: the condition is only mentioned in the history, or the drug at another dose.
"""
import json
import os
import random
import re

R = random.Random(20261125)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sample_corpus")

# key: (clinical name, abbreviation, specialty, ICD-10, meds [(drug, dose, freq)], key finding,
#       imaging (modality, finding) or None, surgical (procedure, pathology) or None)
CONDITIONS = {
    "nstemi": ("non-ST-elevation myocardial infarction", "NSTEMI", "Cardiology", "I21.4",
               [("aspirin", "81 mg", "daily"), ("atorvastatin", "80 mg", "nightly"), ("metoprolol tartrate", "25 mg", "BID"), ("clopidogrel", "75 mg", "daily")],
               "troponin I peaked at {t} ng/mL with {ecg}",
               ("Cardiac catheterization", "{pct}% stenosis of the proximal LAD, treated with a drug-eluting stent"), None),
    "chf": ("acute on chronic systolic congestive heart failure", "CHF", "Cardiology", "I50.23",
            [("furosemide", "40 mg", "IV BID"), ("carvedilol", "12.5 mg", "BID"), ("lisinopril", "10 mg", "daily"), ("spironolactone", "25 mg", "daily")],
            "BNP {bnp} pg/mL, weight up {kg} kg from dry weight, bilateral lower extremity pitting edema",
            ("Transthoracic echocardiogram", "left ventricular ejection fraction {ef}% with global hypokinesis"), None),
    "afib": ("atrial fibrillation with rapid ventricular response", "AFib with RVR", "Cardiology", "I48.91",
             [("apixaban", "5 mg", "BID"), ("diltiazem", "30 mg", "q6h"), ("metoprolol tartrate", "50 mg", "BID")],
             "irregularly irregular rhythm at {hr} bpm on EKG, CHA2DS2-VASc {cha}", None, None),
    "cap": ("community-acquired pneumonia", "CAP", "Pulmonology", "J18.9",
            [("ceftriaxone", "1 g", "IV daily"), ("azithromycin", "500 mg", "daily")],
            "fever to {temp} C, productive cough, WBC {wbc} K/uL, SpO2 {spo2}% on room air",
            ("Chest x-ray PA and lateral", "right lower lobe consolidation with air bronchograms; no pleural effusion"), None),
    "copd": ("acute exacerbation of chronic obstructive pulmonary disease", "COPD exacerbation", "Pulmonology", "J44.1",
             [("albuterol-ipratropium", "3 mL nebulized", "q4h"), ("prednisone", "40 mg", "daily x5 days"), ("doxycycline", "100 mg", "BID")],
             "diffuse expiratory wheezes, accessory muscle use, ABG pH {ph} / pCO2 {pco2}",
             ("Chest x-ray", "hyperinflated lungs with flattened diaphragms; no focal consolidation"), None),
    "pe": ("acute pulmonary embolism", "PE", "Pulmonology", "I26.99",
           [("heparin", "weight-based", "IV infusion"), ("apixaban", "10 mg", "BID x7 days then 5 mg BID")],
           "pleuritic chest pain, HR {hr}, D-dimer {dd} ug/mL FEU",
           ("CT angiography of the chest", "filling defects in the right lower lobe segmental pulmonary arteries; RV/LV ratio {rv}"), None),
    "dm2": ("type 2 diabetes mellitus with hyperglycemia", "T2DM", "Endocrinology", "E11.65",
            [("metformin", "1000 mg", "BID"), ("insulin glargine", "20 units", "at bedtime"), ("empagliflozin", "10 mg", "daily")],
            "HbA1c {a1c}%, fasting glucose {glu} mg/dL, polyuria and polydipsia", None, None),
    "aki": ("acute kidney injury on chronic kidney disease stage 3", "AKI on CKD 3", "Nephrology", "N17.9",
            [("sodium bicarbonate", "650 mg", "BID"), ("normal saline", "75 mL/h", "IV")],
            "creatinine {cr} mg/dL from a baseline of 1.4, potassium {k} mEq/L, urine output decreased",
            ("Renal ultrasound", "no hydronephrosis; echogenic kidneys consistent with medical renal disease"), None),
    "stroke": ("acute ischemic stroke in the left MCA territory", "CVA", "Neurology", "I63.512",
               [("alteplase", "0.9 mg/kg", "IV once"), ("aspirin", "325 mg", "daily"), ("atorvastatin", "80 mg", "nightly")],
               "right-sided weakness and expressive aphasia, NIHSS {nihss}, last known well {lkw} hours before arrival",
               ("MRI brain with DWI", "restricted diffusion in the left frontal and parietal cortex in the MCA territory"), None),
    "appy": ("acute appendicitis", "appendicitis", "General Surgery", "K35.80",
             [("piperacillin-tazobactam", "3.375 g", "IV q6h"), ("morphine", "2 mg", "IV q4h PRN pain")],
             "right lower quadrant tenderness with rebound, WBC {wbc} K/uL",
             ("CT abdomen and pelvis with contrast", "dilated appendix measuring {mm} mm with periappendiceal fat stranding"),
             ("Laparoscopic appendectomy", "acute suppurative appendicitis with periappendicitis; no neoplasm")),
    "chole": ("acute calculous cholecystitis", "cholecystitis", "General Surgery", "K80.00",
              [("ampicillin-sulbactam", "3 g", "IV q6h"), ("ondansetron", "4 mg", "IV q8h PRN nausea")],
              "right upper quadrant pain after fatty meals, positive Murphy sign, T bili {bili} mg/dL",
              ("Right upper quadrant ultrasound", "multiple gallstones, gallbladder wall thickening to {mm} mm and pericholecystic fluid"),
              ("Laparoscopic cholecystectomy", "acute and chronic cholecystitis with cholelithiasis")),
    "hipfx": ("displaced left femoral neck fracture", "hip fracture", "Orthopedics", "S72.002A",
              [("enoxaparin", "40 mg", "SC daily"), ("oxycodone", "5 mg", "q4h PRN pain"), ("acetaminophen", "1 g", "q8h")],
              "mechanical fall at home, shortened and externally rotated left leg",
              ("X-ray left hip", "displaced subcapital femoral neck fracture"),
              ("Left hip hemiarthroplasty", "femoral head with fracture and osteopenic trabecular bone; no tumor")),
    "breastca": ("invasive ductal carcinoma of the left breast", "breast cancer", "Oncology", "C50.912",
                 [("letrozole", "2.5 mg", "daily"), ("ondansetron", "8 mg", "q8h PRN nausea")],
                 "palpable {cm} cm mass in the upper outer quadrant of the left breast",
                 ("Diagnostic mammogram", "irregular spiculated mass in the left breast, BI-RADS 5"),
                 ("Ultrasound-guided core needle biopsy of the left breast", "invasive ductal carcinoma, Nottingham grade 2, ER positive, PR positive, HER2 negative")),
    "colonca": ("adenocarcinoma of the sigmoid colon", "colon cancer", "Oncology", "C18.7",
                [("oxaliplatin", "85 mg/m2", "IV every 2 weeks"), ("capecitabine", "1000 mg/m2", "BID days 1-14")],
                "iron deficiency anemia with hemoglobin {hgb} g/dL and change in bowel habits",
                ("CT chest, abdomen and pelvis", "circumferential sigmoid wall thickening without distant metastases"),
                ("Laparoscopic sigmoid colectomy", "moderately differentiated adenocarcinoma invading the muscularis propria, 0 of 14 lymph nodes, margins negative")),
    "urosepsis": ("sepsis secondary to urinary tract infection", "urosepsis", "Infectious Disease", "A41.9",
                  [("piperacillin-tazobactam", "4.5 g", "IV q6h"), ("lactated Ringer's", "30 mL/kg", "IV bolus")],
                  "temperature {temp} C, lactate {lac} mmol/L, urinalysis with large leukocyte esterase and nitrites", None, None),
    "ugib": ("upper gastrointestinal bleed from a duodenal ulcer", "UGIB", "Gastroenterology", "K26.4",
             [("pantoprazole", "40 mg", "IV BID"), ("packed red blood cells", "2 units", "transfused")],
             "melena and coffee-ground emesis, hemoglobin {hgb} g/dL, BUN {bun} mg/dL",
             ("Esophagogastroduodenoscopy", "clean-based {mm} mm duodenal bulb ulcer; no active bleeding"), None),
    "seizure": ("new-onset generalized tonic-clonic seizure", "seizure", "Neurology", "G40.909",
                [("levetiracetam", "500 mg", "BID"), ("lorazepam", "2 mg", "IV PRN seizure")],
                "witnessed generalized shaking for {min} minutes with tongue biting and postictal confusion",
                ("EEG", "intermittent left temporal sharp waves"), None),
    "cellulitis": ("cellulitis of the left lower extremity", "cellulitis", "Infectious Disease", "L03.116",
                   [("cefazolin", "2 g", "IV q8h"), ("cephalexin", "500 mg", "QID")],
                   "spreading erythema, warmth and tenderness of the left shin, WBC {wbc} K/uL", None, None),
}

CHRONIC = {
    "htn": ("essential hypertension", "HTN", [("amlodipine", "10 mg", "daily"), ("lisinopril", "20 mg", "daily"), ("hydrochlorothiazide", "25 mg", "daily")]),
    "dm2c": ("type 2 diabetes mellitus", "T2DM", [("metformin", "500 mg", "BID")]),
    "hypothyroid": ("hypothyroidism", "hypothyroidism", [("levothyroxine", "75 mcg", "daily")]),
    "depression": ("major depressive disorder", "MDD", [("sertraline", "50 mg", "daily")]),
    "hld": ("hyperlipidemia", "HLD", [("atorvastatin", "40 mg", "nightly")]),
    "gerd": ("gastroesophageal reflux disease", "GERD", [("omeprazole", "20 mg", "daily")]),
}

FIRST = ["James", "Maria", "Robert", "Linda", "Michael", "Patricia", "William", "Elizabeth", "David", "Jennifer",
         "Richard", "Susan", "Joseph", "Margaret", "Thomas", "Dorothy", "Charles", "Lisa", "Daniel", "Nancy"]


def fill(template):
    vals = dict(t=round(R.uniform(0.8, 9.5), 1), ecg=R.choice(["ST depressions in V4-V6", "T-wave inversions in the lateral leads"]),
                pct=R.choice([80, 90, 95]), bnp=R.randint(900, 3200), kg=R.randint(2, 6), ef=R.choice([20, 25, 30, 35]),
                hr=R.randint(112, 148), cha=R.randint(2, 5), temp=round(R.uniform(38.2, 39.6), 1), wbc=round(R.uniform(12.5, 21.0), 1),
                spo2=R.randint(86, 93), ph=round(R.uniform(7.28, 7.34), 2), pco2=R.randint(52, 68), dd=round(R.uniform(1.2, 6.5), 1),
                rv=round(R.uniform(0.9, 1.3), 1), a1c=round(R.uniform(8.6, 11.8), 1), glu=R.randint(210, 340),
                cr=round(R.uniform(2.3, 3.9), 1), k=round(R.uniform(5.1, 6.0), 1), nihss=R.randint(6, 14), lkw=R.choice([1, 2, 3]),
                mm=R.randint(8, 14), bili=round(R.uniform(1.2, 2.8), 1), cm=round(R.uniform(1.6, 3.4), 1), hgb=round(R.uniform(6.8, 9.2), 1),
                lac=round(R.uniform(2.4, 4.8), 1), bun=R.randint(38, 72), min=R.randint(2, 5))
    return template.format(**vals)


def cap(s):
    return s[:1].upper() + s[1:]


def med_line(m):
    return f"{m[0]} {m[1]} {m[2]}"


def vitals():
    return (f"T {round(R.uniform(36.4, 37.6), 1)} C, HR {R.randint(62, 104)}, BP {R.randint(108, 168)}/{R.randint(58, 96)}, "
            f"RR {R.randint(14, 22)}, SpO2 {R.randint(93, 99)}% on room air")


def denials(cond):
    pool = ["Denies chest pain", "Denies shortness of breath", "No SOB or orthopnea", "Denies fever or chills", "No nausea or vomiting",
            "Denies abdominal pain", "No headache or focal weakness", "Denies dysuria", "No melena or hematochezia"]
    bad = {"nstemi": "chest pain", "pe": "chest pain", "cap": "fever", "urosepsis": "fever", "chf": "shortness",
           "copd": "shortness", "appy": "abdominal", "chole": "abdominal", "ugib": "melena", "stroke": "weakness",
           "seizure": "headache"}.get(cond, "~")
    return ". ".join(R.sample([p for p in pool if bad not in p], 3)) + "."


def make_patient(i):
    cond = list(CONDITIONS)[i % len(CONDITIONS)]
    chronic = R.sample(list(CHRONIC), R.randint(1, 3))
    if cond == "dm2":
        chronic = [c for c in chronic if c != "dm2c"]
    return dict(pid=f"P{1000 + i}", cond=cond, chronic=chronic, age=R.randint(34, 91), sex=R.choice(["male", "female"]),
                name=R.choice(FIRST), year=R.choice([2023, 2024, 2025]), month=R.randint(1, 12), day=R.randint(1, 20))


def note_set(p):
    c = CONDITIONS[p["cond"]]
    name, abbr, spec, icd, meds, finding_t, imaging, surgery = c
    finding = fill(finding_t)
    chron = [CHRONIC[k] for k in p["chronic"]]
    chron_meds = [m for ch in chron for m in ch[2]]
    hx = ", ".join(ch[0] if ch[0] == ch[1] else f"{ch[0]} ({ch[1]})" for ch in chron)
    age_sex = f"{p['age']}-year-old {p['sex']}"
    date = lambda d: f"{p['year']}-{p['month']:02d}-{p['day'] + d:02d}"
    notes = []
    # (note_type, specialty, title, text, topics: {cond: grade}, day offset)
    topics_primary = {p["cond"]: 2, **{k: 1 for k in p["chronic"]}}
    # Progress notes and discharge summaries manage the comorbidities explicitly.
    topics_managed = {p["cond"]: 2, **{k: 2 for k in p["chronic"]}}

    hpi = (f"{age_sex} with a history of {hx} who presents with {finding}. {denials(p['cond'])} "
           f"Symptoms began {R.randint(1, 6)} days ago and have progressively worsened.")
    ed = (f"CHIEF COMPLAINT: {R.choice(['worsening symptoms', 'sent in by PCP', 'brought in by EMS'])}.\n"
          f"HPI: {hpi}\nVITALS: {vitals()}.\nEXAM: {R.choice(['Alert and oriented x3', 'Mildly uncomfortable, in no acute distress'])}. "
          f"Findings notable for {finding}.\nED COURSE: {cap(name)} suspected; {meds[0][0]} {meds[0][1]} given. "
          f"Admitted to {spec.lower()} for further management.\nDISPOSITION: Admit.")
    notes.append(("ED note", "Emergency Medicine", f"ED provider note - {abbr}", ed, topics_primary, 0))

    hp = (f"HISTORY OF PRESENT ILLNESS: {hpi}\nPAST MEDICAL HISTORY: {hx}.\n"
          f"HOME MEDICATIONS: {'; '.join(med_line(m) for m in chron_meds)}.\nSOCIAL HISTORY: {R.choice(['Former smoker, quit 10 years ago', 'Never smoker, occasional alcohol', '40 pack-year smoking history', 'Lives alone, independent in ADLs'])}.\n"
          f"REVIEW OF SYSTEMS: {denials(p['cond'])}\nPHYSICAL EXAM: {vitals()}. {cap(finding)}.\n"
          f"ASSESSMENT AND PLAN: {age_sex} admitted with {name} ({abbr}). Start {med_line(meds[0])}"
          + (f" and {med_line(meds[1])}" if len(meds) > 1 else "") + f". Continue home medications. DVT prophylaxis. Full code.")
    notes.append(("history and physical", "Internal Medicine", f"Admission H&P - {name}", hp, topics_primary, 0))

    if imaging:
        modality, find_t = imaging
        rad = (f"EXAM: {modality}.\nCLINICAL INDICATION: {R.choice(['Evaluate for', 'Rule out', 'Concern for'])} {name}.\n"
               f"COMPARISON: {R.choice(['None available', 'Prior study from ' + str(p['year'] - 1)])}.\n"
               f"FINDINGS: {cap(fill(find_t))}. {R.choice(['No other acute abnormality.', 'Incidental small hepatic cyst.', 'Degenerative changes of the spine.'])}\n"
               f"IMPRESSION: Findings consistent with {name}.")
        rad_type = "procedure note" if modality in ("Cardiac catheterization", "Esophagogastroduodenoscopy", "EEG") else "radiology report"
        rad_spec = spec if rad_type == "procedure note" else "Radiology"
        notes.append((rad_type, rad_spec, f"{modality}", rad, {p["cond"]: 2}, 1))

    if surgery:
        proc, path_t = surgery
        op = (f"PREOPERATIVE DIAGNOSIS: {cap(name)}.\nPOSTOPERATIVE DIAGNOSIS: Same.\nPROCEDURE: {proc}.\n"
              f"ANESTHESIA: {R.choice(['General endotracheal', 'Spinal with sedation', 'Local with monitored anesthesia care'])}.\n"
              f"ESTIMATED BLOOD LOSS: {R.choice([10, 25, 50, 150, 300])} mL.\nFINDINGS: Consistent with {name}.\n"
              f"DESCRIPTION: The patient was brought to the operating room and placed supine. After timeout, the procedure was performed without complication. "
              f"Specimen sent to pathology. The patient tolerated the procedure well and was taken to PACU in stable condition.")
        if "biopsy" not in proc.lower():
            notes.append(("operative note", spec if spec != "Oncology" else "General Surgery", f"Operative report - {proc}", op, {p["cond"]: 2}, 1))
        pathn = (f"SPECIMEN: {proc.replace('Laparoscopic ', '').replace('Left hip ', 'Femoral head from ')}.\n"
                 f"GROSS DESCRIPTION: Received fresh, labeled with the patient's name, {R.randint(2, 9)}.{R.randint(0, 9)} cm in greatest dimension.\n"
                 f"MICROSCOPIC DESCRIPTION: Sections examined.\nFINAL DIAGNOSIS: {cap(path_t)}.")
        notes.append(("pathology report", "Pathology", f"Surgical pathology - {abbr}", pathn, {p["cond"]: 2}, 2))

    prog = (f"SUBJECTIVE: Feels {R.choice(['somewhat better', 'about the same', 'much improved'])} today. {denials(p['cond'])}\n"
            f"OBJECTIVE: {vitals()}. Labs reviewed.\nASSESSMENT/PLAN:\n1. {cap(name)} ({abbr}): hospital day {R.randint(2, 4)}. "
            f"Continue {med_line(meds[-1])}. Monitor closely.\n" + "".join(
                f"{j + 2}. {ch[1]}: continue {med_line(ch[2][0])}.\n" for j, ch in enumerate(chron)))
    notes.append(("progress note", spec, f"Progress note - {abbr}", prog, topics_managed, 2))

    if R.random() < 0.5:
        cons = (f"REASON FOR CONSULTATION: {cap(name)}.\nHPI: {hpi}\n"
                f"RECOMMENDATIONS: Agree with {med_line(meds[0])}. {R.choice(['Will follow.', 'Please call with questions.', 'Outpatient follow-up in 2 weeks.'])}")
        notes.append(("consult note", spec, f"{spec} consultation", cons, topics_primary, 1))

    if R.random() < 0.5:
        nurse = (f"Nursing note: Patient resting in bed, {R.choice(['alert and oriented', 'drowsy but arousable'])}. {vitals()}. "
                 f"Pain {R.randint(0, 6)}/10. {R.choice(['Ambulated in hallway with assistance.', 'Fall precautions in place.', 'Tolerating regular diet.'])} "
                 f"Medications given as ordered including {med_line(R.choice(meds))}. Call light within reach.")
        notes.append(("nursing note", "Nursing", "Nursing shift note", nurse, {p["cond"]: 1}, 2))

    dc_meds = meds[-2:] + chron_meds
    dc = (f"ADMISSION DATE: {date(0)}\nDISCHARGE DATE: {date(4)}\nDISCHARGE DIAGNOSES:\n1. {cap(name)} ({icd})\n"
          + "".join(f"{j + 2}. {cap(ch[0])}\n" for j, ch in enumerate(chron))
          + f"HOSPITAL COURSE: {age_sex} admitted with {name}. {cap(finding)}. Treated with {med_line(meds[0])} with clinical improvement.\n"
          f"DISCHARGE MEDICATIONS: {'; '.join(med_line(m) for m in dc_meds)}.\nFOLLOW-UP: {R.choice(['PCP in 1 week', spec + ' clinic in 2 weeks', 'Cardiology and PCP in 1-2 weeks'])}.\n"
          f"CONDITION AT DISCHARGE: Stable.")
    notes.append(("discharge summary", spec, f"Discharge summary - {name}", dc, topics_managed, 4))

    if R.random() < 0.35:
        ml = "MEDICATION LIST (reconciled at discharge):\n" + "\n".join(f"- {med_line(m)}" for m in dc_meds)
        notes.append(("medication list", "Pharmacy", "Medication reconciliation", ml, {k: 1 for k in [p["cond"]] + p["chronic"]}, 4))

    out = []
    for k, (ntype, nspec, title, text, topics, d) in enumerate(notes):
        out.append(dict(id=f"{p['pid']}-{k + 1:02d}", title=title, text=text, patient_id=p["pid"], note_type=ntype,
                        specialty=nspec, date=date(d), _topics=topics))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    notes = []
    i = 0
    while len(notes) < 320:
        notes.extend(note_set(make_patient(i)))
        i += 1

    def about(cond, grade_primary_only=False):
        rel = {}
        for n in notes:
            g = n["_topics"].get(cond)
            if g and (g == 2 or not grade_primary_only):
                rel[n["id"]] = g
        return rel

    def containing(s, other=None):
        rel = {}
        for n in notes:
            if s.lower() in n["text"].lower():
                rel[n["id"]] = 2
            elif other and other.lower() in n["text"].lower():
                rel[n["id"]] = 1
        return rel

    queries = [
        # Semantic: lay words and expansions for clinical terms.
        ("heart attack", about("nstemi")),
        ("heart attack treated with a stent", about("nstemi", True)),
        ("weak heart pumping, fluid overload", about("chf")),
        ("irregular heartbeat blood thinner", about("afib")),
        ("lung infection with fever", about("cap")),
        ("smoker's lung flare with wheezing", about("copd")),
        ("blood clot in the lung", about("pe")),
        ("high blood sugar diabetes poorly controlled", about("dm2")),
        ("kidneys not working, creatinine up", about("aki")),
        ("brain attack with weakness on one side", about("stroke")),
        ("inflamed appendix surgery", about("appy")),
        ("gallbladder attack gallstones", about("chole")),
        ("broken hip after a fall", about("hipfx")),
        ("breast cancer biopsy", about("breastca")),
        ("bowel cancer", about("colonca")),
        ("bladder infection that spread to the blood", about("urosepsis")),
        ("bleeding stomach ulcer, black stools", about("ugib")),
        ("convulsions", about("seizure")),
        ("skin infection of the leg", about("cellulitis")),
        ("underactive thyroid", about("hypothyroid")),
        ("high blood pressure", about("htn")),
        ("depression on an SSRI", about("depression")),
        # Abbreviations and expansions.
        ("NSTEMI", about("nstemi")),
        ("CHF exacerbation", about("chf")),
        ("AFib with RVR", about("afib")),
        ("COPD", about("copd")),
        ("PE", about("pe")),
        ("CVA", about("stroke")),
        ("UGIB", about("ugib")),
        ("AKI on CKD", about("aki")),
        ("myocardial infarction", about("nstemi")),
        ("pulmonary embolism", about("pe")),
        # Lexical: exact drugs, doses, codes, values.
        ("metoprolol tartrate 25 mg BID", containing("metoprolol tartrate 25 mg BID", "metoprolol")),
        ("apixaban 5 mg", containing("apixaban 5 mg", "apixaban")),
        ("insulin glargine 20 units", containing("insulin glargine 20 units", "insulin")),
        ("levetiracetam 500 mg", containing("levetiracetam 500 mg", "levetiracetam")),
        ("piperacillin-tazobactam", containing("piperacillin-tazobactam")),
        ("letrozole", containing("letrozole")),
        ("I21.4", containing("I21.4")),
        ("K35.80", containing("K35.80")),
        ("E11.65", containing("E11.65")),
        ("BI-RADS 5", containing("BI-RADS 5")),
        ("ER positive HER2 negative", containing("HER2 negative")),
        ("hemiarthroplasty", containing("hemiarthroplasty")),
        ("DWI restricted diffusion", containing("restricted diffusion")),
    ]
    def either(*rels):
        out = {}
        for rel in rels:
            for doc, g in rel.items():
                out[doc] = max(g, out.get(doc, 0))
        return out

    # Abbreviation queries: each is written in the form the relevant notes do NOT use (an
    # abbreviation where the notes spell the term out, or the reverse), so BM25 can only find
    # them through expansion. Judged by the notes' topics or by the other form's presence.
    abbrev_queries = [
        ("MI", about("nstemi")),
        ("DM", either(about("dm2"), about("dm2c"))),
        ("UTI", about("urosepsis")),
        ("EGD", containing("Esophagogastroduodenoscopy")),
        ("TTE", containing("Transthoracic echocardiogram")),
        ("LLE cellulitis", about("cellulitis")),
        ("RUQ pain", about("chole")),
        ("RLQ tenderness", about("appy")),
        ("UA with nitrites", containing("urinalysis")),
        ("LVEF", containing("left ventricular ejection fraction")),
        ("GTC seizure", about("seizure")),
        ("BLE edema", containing("bilateral lower extremity")),
        ("brain natriuretic peptide", containing("BNP")),
        ("blood urea nitrogen", containing("BUN")),
        ("arterial blood gas", containing("ABG")),
        ("electrocardiogram", containing("EKG")),
        ("middle cerebral artery", containing("MCA")),
        ("white blood cell count", containing("WBC")),
    ]
    # Negation-sensitive queries: relevant are the notes that affirm the finding; the notes
    # that only deny it (the review-of-systems denials and the negative imaging findings the
    # templates write) or give it as a PRN indication are judged not relevant (grade 0).
    not_affirmed = ["Denies chest pain", "Denies shortness of breath", "No SOB or orthopnea", "Denies fever or chills",
                    "No nausea or vomiting", "Denies abdominal pain", "No headache or focal weakness", "Denies dysuria",
                    "No melena or hematochezia", "no pleural effusion", "no focal consolidation", "no hydronephrosis",
                    "no neoplasm", "no tumor", "no active bleeding", "without distant metastases", "PRN nausea", "PRN pain",
                    "PRN seizure"]

    def affirming(term):
        rel = {}
        for n in notes:
            full = (n["title"] or "") + "\n" + n["text"]
            kept = full
            for p_ in not_affirmed:
                kept = re.sub(re.escape(p_), " ", kept, flags=re.I)
            if term.lower() in kept.lower():
                rel[n["id"]] = 2
            elif term.lower() in full.lower():
                rel[n["id"]] = 0
        return rel

    negation_queries = [
        ("chest pain", affirming("chest pain")),
        ("fever", affirming("fever")),
        ("fever and chills", affirming("fever")),
        ("weakness", affirming("weakness")),
        ("melena", affirming("melena")),
        ("consolidation", affirming("consolidation")),
    ]
    with open(os.path.join(OUT, "notes.jsonl"), "w") as f:
        for n in notes:
            f.write(json.dumps({k: v for k, v in n.items() if not k.startswith("_")}) + "\n")
    def write_set(suffix, prefix, qs):
        """queries{suffix}.jsonl and qrels{suffix}.tsv; ids {prefix}01, {prefix}02, ..."""
        with open(os.path.join(OUT, f"queries{suffix}.jsonl"), "w") as fq, \
                open(os.path.join(OUT, f"qrels{suffix}.tsv"), "w") as fr:
            fr.write("query-id\tcorpus-id\tscore\n")
            for qi, (text, rel) in enumerate(qs):
                assert any(g > 0 for g in rel.values()), f"query {text!r} has no relevant note"
                qid = f"{prefix}{qi + 1:02d}"
                fq.write(json.dumps({"_id": qid, "text": text}) + "\n")
                for doc, g in sorted(rel.items()):
                    fr.write(f"{qid}\t{doc}\t{g}\n")

    write_set("", "q", queries)
    write_set("_abbrev", "a", abbrev_queries)
    write_set("_negation", "n", negation_queries)
    types = {n["note_type"] for n in notes}
    specs = {n["specialty"] for n in notes}
    print(f"{len(notes)} notes, {len(types)} note types, {len(specs)} specialties, {len(queries)} queries -> {OUT}")


if __name__ == "__main__":
    main()
